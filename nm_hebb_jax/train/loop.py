"""``train_and_evaluate(config, workdir)``: both phases of NM-Hebb, resumable, on any mesh.

Order of work: validate everything that can be validated without compiling (config, data, model,
tap names, workdir), then build the phase-1 step (compiled once), run it, refresh EWC, build the
phase-2 step (compiled once), run it. A workdir that holds a checkpoint is resumed (phase, step, EWC
state; the data stream is a pure function of the step); one that holds a finished run is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nm_hebb_jax.errors import NonFiniteError, Preempted, RunError
from nm_hebb_jax.neuromod import Neuromodulator
from nm_hebb_jax.train import ewc as E
from nm_hebb_jax.train import methods as M
from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.checkpoint import (
    Checkpointer,
    CorruptCheckpointError,
    restore_params_only,
    tree_signature,
)
from nm_hebb_jax.train.hypergradient import (
    hyper_variant,
    init_hyper,
    make_phi_optimizer,
)
from nm_hebb_jax.train.state import (
    TrainState,
    init_params,
    make_optimizer,
    make_schedule,
)
from nm_hebb_jax.train.steps import make_eval_step, make_train_step
from nm_hebb_jax.train.validate import DONATE_STATE, Run, build_run, durations, model_overrides
from nm_hebb_jax.train.writer import MetricWriter, provenance, write_config

__all__ = [
    "DONATE_STATE",
    "NonFiniteError",
    "Preempted",
    "Run",
    "RunError",
    "Trainer",
    "build_run",
    "durations",
    "train_and_evaluate",
]

PyTree = Any


def donates_state(config) -> bool:
    """Whether the train steps donate their input state (``config.donate_state``).

    ``'auto'``: on GPU/TPU, where in-place updates save memory, and not on the CPU backend, where
    the state is small next to a step's temporaries and the donated ResNet-18 CE step measured no
    faster (7% slower before ``conv_input_barrier``; BENCHMARKS.md).
    """
    mode = config.get("donate_state", "auto")
    return mode == "always" or (mode == "auto" and jax.default_backend() != "cpu")


def _model_meta(run: Run, abstract_backbone) -> dict:
    sig = json.dumps(tree_signature(abstract_backbone), sort_keys=True)
    return {
        "name": run.config.model.name,
        "num_classes": run.num_classes,
        "overrides": {k: str(v) for k, v in model_overrides(run.config).items()},
        "signature": hashlib.sha256(sig.encode()).hexdigest()[:16],
    }


def _embed_dim(model, image_shape) -> int:
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
    )
    out = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, *image_shape)), train=False)[1], variables
    )
    return int(out["embedding"].shape[-1])


class Trainer:
    """Holds the compiled steps and the loop of one run (see :func:`train_and_evaluate`)."""

    def __init__(self, run: Run, workdir: str):
        self.run = run
        self.config = run.config
        self.workdir = os.path.abspath(os.path.expanduser(workdir))
        self.mesh = run.mesh
        self.repl = S.replicated(self.mesh)
        cfg = self.config
        self.image_shape = tuple(run.dataset.image_shape)
        self.embed_dim = _embed_dim(run.model, self.image_shape)
        self.centers = M.uses_centers(cfg)
        self.neuromod = Neuromodulator(hidden=cfg.nm.hidden)
        self.phi_tx = make_phi_optimizer(cfg.nm.phi_optimizer, cfg.nm.lr)
        self.peak_lr = cfg.optim.base_lr * cfg.batch_size / 128.0
        self.compiled: dict[str, Any] = {}
        self.eval_step = jax.jit(make_eval_step(run.model))
        self.fisher_fn = E.make_fisher_fn(run.model)
        self.history: list[dict] = []

    # ---------------------------------------------------------------- initial state
    def _init_fn(self, key):
        return init_params(
            self.run.model,
            key,
            self.image_shape,
            num_classes=self.run.num_classes,
            embed_dim=self.embed_dim,
            centers=self.centers,
            nm_hidden=self.config.nm.hidden,
        )

    def init_variables(self):
        key = jax.random.key(self.config.seed)
        return jax.jit(self._init_fn, out_shardings=self.repl)(key)

    def abstract_variables(self):
        return jax.eval_shape(self._init_fn, jax.random.key(self.config.seed))

    def phase_setup(self, phase: int):
        """Plan, optimiser and the phase's compiled steps (each compiled once, on first use).

        Returns ``(plan, tx, step_for, start, num_steps)`` where ``step_for(global_step)`` is the
        jitted step to run (the hypergradient variant on its steps, else the plain one).
        """
        cfg, run = self.config, self.run
        plan, tx, schedule = self.plan_and_tx(phase)
        n = run.steps[phase - 1]
        start = 0 if phase == 1 else run.steps[0]
        kwargs = dict(
            phase_start=start,
            gate_mode=plan.gate_mode,
            neuromod=self.neuromod,
            phi_tx=self.phi_tx,
            hyper_every=cfg.nm.hyper_every,
            hyper_normalize=cfg.nm.hyper_normalize,
            hyper_norm_decay=cfg.nm.hyper_norm_decay,
            prior_weight=cfg.nm.prior_weight,
            prior_target=cfg.nm.prior_target,
            skip_nonfinite=cfg.skip_nonfinite,
        )
        # A donated state is updated in place: the EWC state and anything else passed alongside
        # must not share its buffers (init_ewc_state copies the anchor for that reason).
        donate = (0,) if donates_state(cfg) else ()

        def compile_(hyper_step):
            return jax.jit(
                make_train_step(plan.objective, tx, schedule, hyper_step=hyper_step, **kwargs),
                in_shardings=(self.repl, self.repl, S.data_sharded(self.mesh)),
                out_shardings=(self.repl, self.repl),
                donate_argnums=donate,
            )

        plain = compile_(False)
        self.compiled[f"phase{phase}"] = plain
        variants = {}
        if plan.gate_mode == "hypergradient":
            k, mode = cfg.nm.hyper_every, cfg.nm.hyper_g_r
            used = {hyper_variant(t, k, mode) for t in range(max(int(k), 1))} - {False}
            names = {True: "hyper", "store": "hyper_store", "apply": "hyper_apply"}
            for v in sorted(used, key=str):
                variants[v] = compile_(v)
                self.compiled[f"phase{phase}_{names[v]}"] = variants[v]

        def step_for(step: int):
            """The compiled step to run at global step ``step``."""
            if not variants:
                return plain
            v = hyper_variant(step - start, cfg.nm.hyper_every, cfg.nm.hyper_g_r)
            return plain if v is False else variants[v]

        return plan, tx, step_for, start, n

    def plan_and_tx(self, phase: int):
        """``(plan, tx, schedule)`` of a phase (nothing is compiled)."""
        cfg, run = self.config, self.run
        plan = M.phase_plan(cfg, run.model, phase, run.hebb_layers)
        n = run.steps[phase - 1]
        lr = self.peak_lr * (1.0 if phase == 1 else cfg.phase2.lr_factor)
        warmup = run.durations.warmup_steps if phase == 1 else 0
        schedule = make_schedule(lr, n, warmup)
        tx = make_optimizer(cfg, schedule, train_neuromod=plan.gate_mode == "joint_prior")
        return plan, tx, schedule

    def make_state(self, params, batch_stats, step: int, tx, plan) -> TrainState:
        """A fresh phase state (new optimiser state) from params, replicated over the mesh."""
        key_data = jax.random.key_data(jax.random.key(self.config.seed + 1))

        def build(params, batch_stats):
            hyper = init_hyper(params, self.phi_tx) if plan.gate_mode == "hypergradient" else {}
            return TrainState(
                step=jnp.asarray(step, jnp.int32),
                params=params,
                batch_stats=batch_stats,
                opt_state=tx.init(params),
                rng=key_data,
                hyper=hyper,
            )

        return jax.jit(build, out_shardings=self.repl)(params, batch_stats)

    def abstract_state_of_phase(self, phase: int):
        """Abstract ``{'train', 'ewc'}`` tree of a phase's checkpoint (restore target)."""
        plan, tx, _ = self.plan_and_tx(phase)
        return self.abstract_state(tx, plan)

    def abstract_state(self, tx, plan) -> TrainState:
        params, bs = self.abstract_variables()
        state = jax.eval_shape(
            lambda p, b: TrainState(
                step=jnp.zeros((), jnp.int32),
                params=p,
                batch_stats=b,
                opt_state=tx.init(p),
                rng=jax.random.key_data(jax.random.key(0)),
                hyper=init_hyper(p, self.phi_tx) if plan.gate_mode == "hypergradient" else {},
            ),
            params,
            bs,
        )
        ewc = jax.eval_shape(E.init_ewc_state, params["backbone"])
        return S.abstract_with_sharding({"train": state, "ewc": ewc}, self.repl)

    # ---------------------------------------------------------------- EWC
    def compute_ewc(self, state: TrainState, refresh_index: int) -> dict:
        """The EWC state refreshed at ``state`` (:func:`nm_hebb_jax.train.ewc.refresh`)."""
        cfg = self.config
        ewc = E.refresh(
            self.fisher_fn,
            self.run.dataset,
            state.params["backbone"],
            state.batch_stats,
            seed=cfg.seed,
            refresh_index=refresh_index,
            num_examples=cfg.ewc.fisher_examples,
            chunk_size=cfg.ewc.chunk_size,
        )
        return jax.device_put(ewc, self.repl)

    # ---------------------------------------------------------------- eval
    def evaluate(self, params, batch_stats, split: str | None = None) -> dict:
        """Exact Top-1 and mean CE over a split (padded, masked last batch)."""
        split = split or self.config.eval.split
        sums = {"correct": 0.0, "loss": 0.0, "count": 0.0}
        for batch in self.run.dataset.eval_batches(split, batch_size=self.config.eval.batch_size):
            out = self.eval_step(params["backbone"], batch_stats, S.global_batch(batch, self.mesh))
            for k in sums:
                sums[k] = sums[k] + out[k]
        sums = jax.device_get(sums)
        count = max(float(sums["count"]), 1.0)
        return {
            "top1": float(sums["correct"]) / count,
            "loss": float(sums["loss"]) / count,
            "num_examples": int(sums["count"]),
        }


def _check_meta(meta: dict, workdir: str, run: Run, model_meta: dict) -> None:
    """Refuses to resume a finished run or a checkpoint of another model, method or dataset."""
    cfg = run.config
    if meta.get("model") != model_meta:
        raise RunError(
            f"workdir {workdir} holds a checkpoint of another model "
            f"({meta.get('model', {}).get('name')}, {meta.get('model', {}).get('num_classes')} "
            f"classes); pass a new --workdir or the config it was trained with"
        )
    if meta.get("finished"):
        raise RunError(
            f"workdir {workdir} already holds a finished run (step {meta['step']}); "
            "pass a new --workdir (evaluate this one with python -m nm_hebb_jax.evaluate)"
        )
    if meta.get("method") != cfg.method or meta.get("dataset") != cfg.data.name:
        raise RunError(
            f"workdir {workdir} holds a {meta.get('method')} run on {meta.get('dataset')}, "
            f"not {cfg.method} on {cfg.data.name}; pass a new --workdir"
        )


class StopSignal:
    """Turns SIGTERM (what a preempted TPU VM receives) into a request to save and stop.

    Used as a context manager around training; installs the handler only in the main thread and
    restores the previous one on exit. With several processes, :meth:`requested` combines the
    flags of all processes (an all-gather of one int per step), so all stop at the same step.
    """

    SIGNALS = (signal.SIGTERM,)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def requested(self) -> bool:
        """Whether any process received a stop signal."""
        flag = self.received is not None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
            if flag and self.received is None:
                self.received = "SIGTERM (another process)"
        return flag


def train_and_evaluate(config, workdir: str, *, mesh=None) -> dict:
    """Trains phase 1 then phase 2 and evaluates; resumes from ``workdir`` if it has a checkpoint.

    Args:
      config: an ``ml_collections.ConfigDict`` from ``configs/*.py``.
      workdir: directory for checkpoints, TensorBoard events, config and provenance.
      mesh: optional device mesh (default: all devices on a ``('data',)`` axis).

    Returns:
      Summary dict: validation metrics at the end of each phase, step counts, best Top-1, and the
      number of compilations of each phase's step.

    Raises:
      RunError: bad input (one line, raised before anything is compiled or written).
      NonFiniteError: a non-finite loss; the last good checkpoint is kept.
      Preempted: SIGTERM received (a checkpoint was saved at the current step; relaunch).
    """
    run = build_run(config, mesh=mesh)
    trainer = Trainer(run, workdir)
    cfg = config
    abstract_params, _ = trainer.abstract_variables()
    model_meta = _model_meta(run, abstract_params["backbone"])
    if cfg.init_from:
        _check_init_from(cfg.init_from, model_meta)
    os.makedirs(trainer.workdir, exist_ok=True)
    ckpt = Checkpointer(trainer.workdir, keep=cfg.ckpt.keep)
    try:
        resumed = ckpt.restore_latest_good(
            lambda meta: trainer.abstract_state_of_phase(int(meta["phase"])),
            lambda meta: _check_meta(meta, ckpt.workdir, run, model_meta),
        )
    except (RunError, CorruptCheckpointError) as e:
        ckpt.close()
        raise RunError(str(e)) from e
    meta = resumed[1] if resumed else None
    is_main = jax.process_index() == 0
    writer = MetricWriter(trainer.workdir, enabled=is_main)
    if is_main:
        write_config(trainer.workdir, cfg)
        writer.append_jsonl("provenance.jsonl", provenance(cfg, run.mesh, resumed_from=meta))

    ds = run.dataset
    base = {
        "method": cfg.method,
        "dataset": cfg.data.name,
        "model": model_meta,
        "data": {
            "mean": [float(v) for v in ds.mean],
            "std": [float(v) for v in ds.std],
            "image_shape": list(ds.image_shape),
            "class_names": list(ds.class_names),
        },
    }
    summary: dict[str, Any] = {"steps": list(run.steps), "workdir": trainer.workdir}
    best_top1 = float(meta.get("best_top1", -1.0)) if meta else -1.0
    resume_phase = int(meta["phase"]) if meta else 1
    state = ewc = None
    stop = StopSignal()
    try:
        stop.__enter__()
        for phase in (1, 2):
            if phase < resume_phase:
                continue
            plan, tx, step_for, start, n = trainer.phase_setup(phase)
            end = start + n
            if meta is not None and phase == resume_phase:
                state, ewc = resumed[0]["train"], resumed[0]["ewc"]
                logging.info(
                    "resumed %s at step %d (phase %d)", trainer.workdir, int(state.step), phase
                )
                if int(state.step) >= end:  # this phase had ended: go on with the next one
                    summary[f"phase{phase}"] = meta.get("val")
                    continue
            else:
                if state is None:
                    params, batch_stats = trainer.init_variables()
                    if cfg.init_from:
                        params, batch_stats = _init_from(trainer, params, batch_stats)
                else:
                    params, batch_stats = state.params, state.batch_stats
                state = trainer.make_state(params, batch_stats, start, tx, plan)
                if phase == 2 and plan.uses_ewc:
                    ewc = trainer.compute_ewc(state, refresh_index=E.PHASE2_REFRESH)
                else:
                    ewc = jax.device_put(E.init_ewc_state(state.params["backbone"]), trainer.repl)
            state, ewc, best_top1, val = _run_phase(
                trainer,
                ckpt,
                writer,
                plan,
                step_for,
                state,
                ewc,
                start,
                end,
                best_top1,
                base,
                stop,
            )
            summary[f"phase{phase}"] = val
            _save(
                ckpt,
                state,
                ewc,
                {
                    **base,
                    "phase": phase,
                    "step": int(state.step),
                    "best_top1": best_top1,
                    "finished": phase == 2,
                    "val": val,
                },
            )
    finally:
        stop.__exit__(None, None, None)
        writer.close()
        ckpt.close()
    summary["best_top1"] = best_top1
    summary["compilations"] = {k: f._cache_size() for k, f in trainer.compiled.items()}
    summary["final_step"] = int(state.step)
    return summary


def _check_init_from(path: str, model_meta: dict) -> None:
    """One-line RunError unless ``path`` holds a checkpoint of the same model."""
    src = Checkpointer(os.path.expanduser(path), read_only=True)
    try:
        meta = src.read_meta()
    finally:
        src.close()
    if meta is None:
        raise RunError(f"init_from {path!r} holds no checkpoint; pass a workdir of a trained run")
    other = meta.get("model", {})
    if other.get("signature") != model_meta["signature"]:
        raise RunError(
            f"init_from {path!r} is a checkpoint of another model ({other.get('name')}, "
            f"{other.get('num_classes')} classes); use a {model_meta['name']} run with the same "
            "overrides and number of classes"
        )


def _init_from(trainer: Trainer, params, batch_stats):
    """Backbone params and batch statistics from ``config.init_from`` (checked beforehand)."""
    loaded, loaded_bs, _ = restore_params_only(trainer.config.init_from, sharding=trainer.repl)
    return {**params, "backbone": loaded["backbone"]}, loaded_bs


def _save(ckpt: Checkpointer, state, ewc, meta: dict, *, best: bool = False) -> None:
    ckpt.save(int(state.step), {"train": state, "ewc": ewc}, meta, best=best)


def _run_phase(
    trainer, ckpt, writer, plan, step_for, state, ewc, start, end, best_top1, base, stop
):
    """The loop of one phase, from ``state.step`` to ``end``."""
    cfg = trainer.config
    ds = trainer.run.dataset
    refresh = trainer.run.durations.ewc_refresh_steps
    pending: list[tuple[int, dict]] = []
    t0 = time.time()
    progress = writer.progress(
        total=trainer.run.total_steps,
        initial=int(state.step),
        desc=f"phase {plan.phase}",
        enabled=cfg.log.progress,
    )

    def flush():
        nonlocal t0
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched, strict=True):
            if not bool(m["finite"]) and not cfg.skip_nonfinite:
                bad = {k: float(v) for k, v in m.items() if not np.isfinite(v)}
                raise NonFiniteError(
                    f"non-finite loss at step {s} ({', '.join(sorted(bad))}); the last good "
                    f"checkpoint is step {ckpt.latest_step()} in {ckpt.workdir}; lower "
                    "--config.optim.base_lr or set --config.skip_nonfinite=True"
                )
        last_step = pending[-1][0]
        skipped = sum(not bool(m["finite"]) for m in fetched)
        mean = {
            k: float(np.mean([float(m[k]) for m in fetched])) for k in fetched[-1] if k != "finite"
        }
        dt = time.time() - t0
        mean["steps_per_s"] = len(fetched) / max(dt, 1e-9)
        mean["nonfinite_steps"] = float(skipped)
        t0 = time.time()
        record = {f"train/{k}": v for k, v in mean.items()}
        writer.scalars(last_step + 1, record)
        progress.update(len(fetched), loss=mean["loss"], top1=mean["top1"])
        pending.clear()

    def save(*, best: bool = False, **extra) -> None:
        meta = {**base, "phase": plan.phase, "step": step, "best_top1": best_top1, **extra}
        _save(ckpt, state, ewc, meta, best=best)

    def validate() -> dict:
        """Validation Top-1/loss at the current step; a new best is saved to ``best/``."""
        nonlocal best_top1
        val = trainer.evaluate(state.params, state.batch_stats)
        writer.scalars(step, {"val/top1": val["top1"], "val/loss": val["loss"]})
        if val["top1"] > best_top1:
            best_top1 = val["top1"]
            save(best=True, val=val)
        return val

    step = int(state.step)
    while step < end:
        t = step - start
        if plan.phase == 1 and plan.uses_ewc and E.refresh_due(t, refresh):
            ewc = trainer.compute_ewc(state, t // refresh)
        batch = ds.train_batch(
            step,
            batch_size=cfg.batch_size,
            augment=cfg.data.augment,
            balanced=plan.balanced,
            k_per_class=cfg.phase2.k_per_class,
        )
        if step == cfg.debug.nan_at_step:
            batch = {**batch, "image": batch["image"] * np.float32("nan")}
        state, metrics = step_for(step)(state, ewc, S.global_batch(batch, trainer.mesh))
        pending.append((step, metrics))
        if step == cfg.debug.kill_at_step:  # test hook: die without any clean-up
            os.kill(os.getpid(), signal.SIGKILL)
        if step == cfg.debug.sigterm_at_step:  # test hook: a real SIGTERM through the handler
            os.kill(os.getpid(), signal.SIGTERM)
        step += 1
        done = step == end
        if step % cfg.log.every_steps == 0 or done:
            flush()
        if step % cfg.log.eval_every_steps == 0 and not done:
            flush()
            validate()
        if step % cfg.ckpt.every_steps == 0 and not done:
            flush()
            save()
        if not done and stop.requested():
            flush()
            save()
            raise Preempted(
                f"received {stop.received}: saved a checkpoint at step {step} in "
                f"{ckpt.workdir}; relaunch the same command to resume"
            )
    flush()
    progress.close()
    val = validate()
    return state, ewc, best_top1, val
