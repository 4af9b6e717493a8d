"""``train_and_evaluate(config, workdir)``: both phases of NM-Hebb, resumable, on any mesh.

Order of work: :func:`~nm_hebb_jax.train.validate.build_run` checks the config and builds data,
model and mesh (nothing compiled); the workdir is created and locked for this run
(:mod:`~nm_hebb_jax.train.workdir`); a workdir holding a checkpoint of the same run is resumed
(phase, step, EWC state; the data stream is a pure function of the step), one holding a finished
run or a run with other settings is refused (:mod:`~nm_hebb_jax.train.resume`). Then, per phase,
the :class:`Trainer` builds the phase's steps (each compiled once) and :func:`run_phase` runs
them: log, validate, checkpoint, stop on request (:mod:`~nm_hebb_jax.train.preemption`). Phase 1
refreshes the EWC state online, phase 2 anchors it at the end of phase 1
(:mod:`~nm_hebb_jax.train.ewc`). A failed write of the workdir (a full disk) ends the run with a
one-line :class:`~nm_hebb_jax.errors.StorageError`, after removing the partial checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nm_hebb_jax.errors import NonFiniteError, Preempted, RunError
from nm_hebb_jax.models import embedding_dim
from nm_hebb_jax.train import ewc as E
from nm_hebb_jax.train import methods as M
from nm_hebb_jax.train import resume
from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train import workdir as W
from nm_hebb_jax.train.checkpoint import Checkpointer
from nm_hebb_jax.train.debug import with_debug_hooks
from nm_hebb_jax.train.hypergradient import (
    STEP_VARIANT_NAMES,
    hyper_variant,
    init_hyper,
    make_phi_optimizer,
    step_variants,
)
from nm_hebb_jax.train.preemption import StopSignal
from nm_hebb_jax.train.state import TrainState, init_params, make_optimizer, make_schedule
from nm_hebb_jax.train.steps import make_eval_step, make_train_step
from nm_hebb_jax.train.validate import DONATE_STATE, Run, build_run, durations
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
    "run_phase",
    "train_and_evaluate",
]

PyTree = Any


def donates_state(config) -> bool:
    """Whether the train steps donate their input state (``config.donate_state``).

    ``'auto'``: on GPU/TPU, where in-place updates save memory, and not on the CPU backend, where
    the state is small next to a step's temporaries and donation measured no faster
    (BENCHMARKS.md).
    """
    mode = config.get("donate_state", "auto")
    return mode == "always" or (mode == "auto" and jax.default_backend() != "cpu")


class Trainer:
    """The compiled steps of one run and the state they start from (no loop: :func:`run_phase`)."""

    def __init__(self, run: Run, workdir: str):
        self.run = run
        self.config = cfg = run.config
        self.workdir = os.path.abspath(os.path.expanduser(workdir))
        self.mesh = run.mesh
        self.repl = S.replicated(self.mesh)
        self.image_shape = tuple(run.dataset.image_shape)
        self.neuromod = M.neuromodulator(cfg)
        self.phi_tx = make_phi_optimizer(cfg.nm.phi_optimizer, cfg.nm.lr)
        self.peak_lr = cfg.optim.base_lr * cfg.batch_size / 128.0
        self.compiled: dict[str, Any] = {}
        self.eval_step = jax.jit(make_eval_step(run.model))
        self.fisher_fn = E.make_fisher_fn(run.model)

    # ---------------------------------------------------------------- initial state
    def _init_fn(self, key):
        return init_params(
            self.run.model,
            key,
            self.image_shape,
            num_classes=self.run.num_classes,
            embed_dim=embedding_dim(self.run.model),
            centers=M.uses_centers(self.config),
            neuromod=self.neuromod,
        )

    def init_variables(self):
        """``(params, batch_stats)`` initialised from the seed, replicated over the mesh."""
        key = jax.random.key(self.config.seed)
        return jax.jit(self._init_fn, out_shardings=self.repl)(key)

    def abstract_variables(self):
        """Shapes and dtypes of :meth:`init_variables` (nothing computed)."""
        return jax.eval_shape(self._init_fn, jax.random.key(self.config.seed))

    # ---------------------------------------------------------------- a phase
    def plan_and_tx(self, phase: int):
        """``(plan, tx, schedule)`` of a phase (nothing is compiled)."""
        cfg, run = self.config, self.run
        plan = M.phase_plan(cfg, run.model, phase, run.hebb_layers, neuromod=self.neuromod)
        n = run.steps[phase - 1]
        lr = self.peak_lr * (1.0 if phase == 1 else cfg.phase2.lr_factor)
        warmup = run.durations.warmup_steps if phase == 1 else 0
        schedule = make_schedule(lr, n, warmup)
        tx = make_optimizer(cfg, schedule, train_neuromod=plan.gate_mode == "joint_prior")
        return plan, tx, schedule

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
            neuromod=plan.neuromod,
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
            for v in step_variants(cfg.nm.hyper_every, cfg.nm.hyper_g_r):
                variants[v] = compile_(v)
                self.compiled[f"phase{phase}_{STEP_VARIANT_NAMES[v]}"] = variants[v]

        def step_for(step: int):
            """The compiled step to run at global step ``step``."""
            if not variants:
                return plain
            v = hyper_variant(step - start, cfg.nm.hyper_every, cfg.nm.hyper_g_r)
            return plain if v is False else variants[v]

        return plan, tx, step_for, start, n

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
        """Abstract, sharded ``{'train': TrainState, 'ewc': ...}`` of a phase with ``tx``."""
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

    # ---------------------------------------------------------------- EWC and evaluation
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


@dataclasses.dataclass
class Session:
    """What the phases of one ``train_and_evaluate`` call share: where they save and log, the
    stop signal, the checkpoint metadata and the best validation Top-1 so far."""

    trainer: Trainer
    ckpt: Checkpointer
    writer: MetricWriter
    stop: StopSignal
    meta: dict
    best_top1: float = -1.0

    def save(self, phase: int, state, ewc, *, best: bool = False, **extra) -> None:
        meta = {
            **self.meta,
            "phase": phase,
            "step": int(state.step),
            "best_top1": self.best_top1,
            **extra,
        }
        self.ckpt.save(int(state.step), {"train": state, "ewc": ewc}, meta, best=best)

    def validate(self, phase: int, state, ewc) -> dict:
        """Validation Top-1/loss at ``state``; a new best is saved to ``best/``."""
        val = self.trainer.evaluate(state.params, state.batch_stats)
        self.writer.scalars(int(state.step), {"val/top1": val["top1"], "val/loss": val["loss"]})
        if val["top1"] > self.best_top1:
            self.best_top1 = val["top1"]
            self.save(phase, state, ewc, best=True, val=val)
        return val


class MetricLog:
    """The train metrics of the steps since the last flush, averaged and written at a flush.

    The steps' metrics stay on the device until then, so logging does not wait for each step.
    """

    def __init__(self, session: Session, progress):
        self.session = session
        self.progress = progress
        self.pending: list[tuple[int, dict]] = []
        self.t0 = time.time()

    def append(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def flush(self) -> None:
        """Writes the mean of each metric; a non-finite step stops the run unless skipped."""
        if not self.pending:
            return
        skip_nonfinite = self.session.trainer.config.skip_nonfinite
        ckpt = self.session.ckpt
        fetched = jax.device_get([m for _, m in self.pending])
        for (s, _), m in zip(self.pending, fetched, strict=True):
            if not bool(m["finite"]) and not skip_nonfinite:
                bad = ", ".join(sorted(k for k, v in m.items() if not np.isfinite(v)))
                last = ckpt.latest_step()
                if last is None:
                    raise NonFiniteError(
                        f"non-finite loss at step {s} ({bad}), before the first checkpoint "
                        f"(none in {ckpt.workdir}); lower --config.optim.base_lr or set "
                        "--config.skip_nonfinite=True, and relaunch"
                    )
                raise NonFiniteError(
                    f"non-finite loss at step {s} ({bad}); the last good checkpoint is step "
                    f"{last} in {ckpt.workdir}: relaunch with --config.skip_nonfinite=True to "
                    "skip such updates from there, or with a lower --config.optim.base_lr and "
                    "--config.resume_override=True"
                )
        last_step = self.pending[-1][0]
        skipped = sum(not bool(m["finite"]) for m in fetched)
        mean = {
            k: float(np.mean([float(m[k]) for m in fetched])) for k in fetched[-1] if k != "finite"
        }
        dt = time.time() - self.t0
        mean["steps_per_s"] = len(fetched) / max(dt, 1e-9)
        mean["nonfinite_steps"] = float(skipped)
        self.t0 = time.time()
        self.session.writer.scalars(last_step + 1, {f"train/{k}": v for k, v in mean.items()})
        self.progress.update(len(fetched), loss=mean["loss"], top1=mean["top1"])
        self.pending.clear()


def run_phase(session: Session, plan, step_for, state, ewc, start: int, end: int):
    """Runs one phase from ``state.step`` to global step ``end``; returns ``(state, ewc, val)``.

    Every ``log.every_steps`` the metrics are written, every ``log.eval_every_steps`` the model is
    validated, every ``ckpt.every_steps`` a checkpoint is saved; a stop request saves and raises
    :class:`~nm_hebb_jax.errors.Preempted`. The phase ends with a validation.
    """
    trainer = session.trainer
    cfg, ds = trainer.config, trainer.run.dataset
    refresh_every = trainer.run.durations.ewc_refresh_steps
    progress = session.writer.progress(
        total=trainer.run.total_steps,
        initial=int(state.step),
        desc=f"phase {plan.phase}",
        enabled=cfg.log.progress,
    )
    log = MetricLog(session, progress)
    step = int(state.step)
    while step < end:
        t = step - start
        if plan.phase == 1 and plan.uses_ewc and E.refresh_due(t, refresh_every):
            ewc = trainer.compute_ewc(state, t // refresh_every)
        batch = ds.train_batch(
            step,
            batch_size=cfg.batch_size,
            augment=cfg.data.augment,
            balanced=plan.balanced,
            k_per_class=cfg.phase2.k_per_class,
        )
        state, metrics = step_for(step)(state, ewc, S.global_batch(batch, trainer.mesh))
        log.append(step, metrics)
        step += 1
        done = step == end
        if step % cfg.log.every_steps == 0 or done:
            log.flush()
        if step % cfg.log.eval_every_steps == 0 and not done:
            log.flush()
            session.validate(plan.phase, state, ewc)
        if step % cfg.ckpt.every_steps == 0 and not done:
            log.flush()
            session.save(plan.phase, state, ewc)
        if not done and session.stop.requested():
            log.flush()
            session.save(plan.phase, state, ewc)
            raise Preempted(
                f"received {session.stop.received}: saved a checkpoint at step {step} in "
                f"{session.ckpt.workdir}; relaunch the same command to resume",
                exit_code=session.stop.exit_code,
            )
    log.flush()
    progress.close()
    return state, ewc, session.validate(plan.phase, state, ewc)


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
      WorkdirError: the workdir is a file, not writable, or in use by another run.
      NonFiniteError: a non-finite loss; the last good checkpoint is kept.
      StorageError: writing the workdir failed (a full disk); the saved checkpoints are kept.
      Preempted: SIGTERM or SIGINT received (a checkpoint was saved at the current step;
        relaunch).
    """
    run = build_run(config, mesh=mesh)
    trainer = Trainer(run, workdir)
    model_meta = resume.model_meta(run, trainer.abstract_variables()[0]["backbone"])
    if config.init_from:
        resume.check_init_from(config.init_from, model_meta)
    with W.hold(trainer.workdir):  # one run writes to a workdir; each process holds its lock
        return _train(trainer, model_meta)


def _train(trainer: Trainer, model_meta: dict) -> dict:
    """:func:`train_and_evaluate` in a held workdir: resume, both phases, the summary.

    A failed write of the workdir (no space left, ...) removes the partial checkpoint and raises
    a one-line StorageError; any other failure removes the partial checkpoint too and propagates.
    """
    run, config = trainer.run, trainer.config
    ckpt = writer = None
    try:
        ckpt = Checkpointer(trainer.workdir, keep=config.ckpt.keep)
        resumed = resume.restore_latest(ckpt, run, model_meta, trainer.abstract_state_of_phase)
        meta = resumed[1] if resumed else None
        is_main = jax.process_index() == 0
        writer = MetricWriter(trainer.workdir, enabled=is_main)
        if is_main:
            write_config(trainer.workdir, config)
            writer.append_jsonl("provenance.jsonl", provenance(config, run.mesh, resumed_from=meta))
        session = Session(trainer, ckpt, writer, StopSignal(), resume.run_meta(run, model_meta))
        session.best_top1 = float(meta.get("best_top1", -1.0)) if meta else -1.0
        summary = _run_phases(session, resumed)
        writer.close()
        ckpt.close()
    except BaseException as e:
        last = None
        if ckpt is not None:
            with contextlib.suppress(Exception):
                last = ckpt.latest_step()
            ckpt.discard_partial()
        _close_after_failure(writer, ckpt)
        failure = W.storage_error(e, trainer.workdir, last)
        if failure is not None:
            raise failure from e
        raise
    summary["best_top1"] = session.best_top1
    summary["compilations"] = {k: f._cache_size() for k, f in trainer.compiled.items()}
    return summary


def _close_after_failure(*closeables) -> None:
    """Closes what a failed run opened; their own errors (the same full disk) are dropped."""
    for c in closeables:
        if c is not None:
            try:
                c.close()
            except Exception as e:  # noqa: BLE001 - the original failure is what is reported
                logging.info("closing %s after a failure: %s", type(c).__name__, e)


def _run_phases(session: Session, resumed) -> dict:
    """Both phases from the resumed checkpoint (or the start); the summary without its totals."""
    trainer, config = session.trainer, session.trainer.config
    run = trainer.run
    meta = resumed[1] if resumed else None
    summary: dict[str, Any] = {"steps": list(run.steps), "workdir": trainer.workdir}
    resume_phase = int(meta["phase"]) if meta else 1
    state = ewc = None
    with session.stop:
        for phase in range(resume_phase, 3):
            plan, tx, step_for, start, n = trainer.phase_setup(phase)
            step_for = with_debug_hooks(step_for, config.debug)
            if meta is not None and phase == resume_phase:
                state, ewc = resumed[0]["train"], resumed[0]["ewc"]
                step = int(state.step)
                logging.info("resumed %s at step %d (phase %d)", trainer.workdir, step, phase)
                if step >= start + n:  # this phase had ended: go on with the next one
                    summary[f"phase{phase}"] = meta.get("val")
                    continue
            else:
                state, ewc = _start_phase(trainer, phase, plan, tx, start, state)
            state, ewc, val = run_phase(session, plan, step_for, state, ewc, start, start + n)
            summary[f"phase{phase}"] = val
            session.save(phase, state, ewc, finished=phase == 2, val=val)
    summary["final_step"] = int(state.step)
    return summary


def _start_phase(trainer: Trainer, phase: int, plan, tx, start: int, previous):
    """A phase's first ``(state, ewc)``: from the seed (or ``init_from``) or the previous phase."""
    cfg = trainer.config
    if previous is None:
        params, batch_stats = trainer.init_variables()
        if cfg.init_from:
            params, batch_stats = resume.init_from(cfg.init_from, params, sharding=trainer.repl)
    else:
        params, batch_stats = previous.params, previous.batch_stats
    state = trainer.make_state(params, batch_stats, start, tx, plan)
    if phase == 2 and plan.uses_ewc:
        ewc = trainer.compute_ewc(state, refresh_index=E.PHASE2_REFRESH)
    else:
        ewc = jax.device_put(E.init_ewc_state(state.params["backbone"]), trainer.repl)
    return state, ewc
