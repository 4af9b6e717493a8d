"""What a workdir's checkpoints may be resumed or initialised from, and the metadata they carry.

A checkpoint's metadata names the method, the dataset, the model (name, classes, width/depth
overrides and a signature of the parameter shapes), the data's normalisation, each phase's length
in steps and the whole config it was trained with. A workdir is resumed only by a run of the same
method, dataset and model, never once it holds a finished run, and only with the same config
except for the fields of :data:`MAY_CHANGE_ON_RESUME` (durations, logging, checkpoint and
evaluation intervals, CPU and process settings, the test hooks): any other difference (the seed,
the data, the model, the method, the optimiser, ...) is refused, field by field, unless the
relaunch sets ``--config.resume_override=True``, which resumes with the new values (a warning
lists them; later resumes compare with them). A phase may grow on resume, but not end before the
checkpoint's step, and phase 1 cannot change length once phase 2 has begun. ``init_from`` takes
the backbone of another run of the same model. Every refusal is a one-line
:class:`~nm_hebb_jax.errors.RunError` raised before anything is written.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from nm_hebb_jax.errors import CorruptCheckpointError, RunError, warn
from nm_hebb_jax.train.checkpoint import Checkpointer, restore_params_only, tree_signature
from nm_hebb_jax.train.validate import Run, model_overrides

PyTree = Any

#: Config fields (glob patterns) a relaunch may change when it resumes a workdir: how long the
#: phases are, how often it logs, validates and saves, what evaluation computes, how the CPU and
#: the processes are set up, and the test hooks. Any other change needs resume_override.
MAY_CHANGE_ON_RESUME: tuple[str, ...] = (
    "phase1.epochs",
    "phase1.num_steps",
    "phase2.epochs",
    "phase2.num_steps",
    "log.*",
    "ckpt.*",
    "eval.*",
    "cpu_tuning",
    "cpu_malloc_tuning",
    "donate_state",
    "distributed.*",
    "debug.*",
    "skip_nonfinite",
    "resume_override",
    "data.cache_dir",
)


def model_meta(run: Run, abstract_backbone: PyTree) -> dict:
    """The model's identity as a checkpoint records it (its signature hashes the param shapes)."""
    sig = json.dumps(tree_signature(abstract_backbone), sort_keys=True)
    return {
        "name": run.config.model.name,
        "num_classes": run.num_classes,
        "overrides": {k: str(v) for k, v in model_overrides(run.config).items()},
        "signature": hashlib.sha256(sig.encode()).hexdigest()[:16],
    }


def config_dict(config) -> dict:
    """A config as the JSON-able dict a checkpoint records (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def run_meta(run: Run, model: dict) -> dict:
    """The metadata every checkpoint of the run carries (what :func:`nm_hebb_jax.load_run` and
    :func:`check_resumable` read), beside the phase, step and validation figures."""
    ds = run.dataset
    return {
        "method": run.config.method,
        "dataset": run.config.data.name,
        "model": model,
        "data": {
            "mean": [float(v) for v in ds.mean],
            "std": [float(v) for v in ds.std],
            "image_shape": list(ds.image_shape),
            "class_names": list(ds.class_names),
        },
        "phase_steps": list(run.steps),
        "config": config_dict(run.config),
    }


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, new value)`` for each field that differs and may not change on
    resume (:data:`MAY_CHANGE_ON_RESUME`); fields present on one side only are not compared
    (a field added to the schema after the checkpoint was written)."""
    old, now = _flatten(saved), _flatten(new)
    return [
        (field, old[field], now[field])
        for field in sorted(old.keys() & now.keys())
        if old[field] != now[field]
        and not any(fnmatch.fnmatchcase(field, p) for p in MAY_CHANGE_ON_RESUME)
    ]


def _saved_config(meta: dict, workdir: str) -> dict | None:
    """The config the checkpoint was trained with (older checkpoints: ``config.json``)."""
    if isinstance(meta.get("config"), dict):
        return meta["config"]
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _describe(changes: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    text = ", ".join(f"{f}: {json.dumps(a)} -> {json.dumps(b)}" for f, a, b in changes[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def check_durations(meta: dict, workdir: str, run: Run) -> None:
    """A phase may grow on resume, not end before the checkpoint; phase 1 is fixed in phase 2."""
    step, phase = int(meta["step"]), int(meta["phase"])
    p1, p2 = run.steps
    if phase == 1 and step > p1:
        raise RunError(
            f"the checkpoint in {workdir} is at step {step} of phase 1, but phase 1 now has {p1} "
            f"steps: set --config.phase1.num_steps (or epochs) to at least {step} steps"
        )
    saved = meta.get("phase_steps")
    if phase == 2 and saved and int(saved[0]) != p1:
        raise RunError(
            f"phase 1 of the run in {workdir} ended at step {saved[0]} and phase 2 has begun; "
            f"phase 1 cannot change length now ({p1} steps): set --config.phase1.num_steps="
            f"{saved[0]}"
        )
    if phase == 2 and step > p1 + p2:
        raise RunError(
            f"the checkpoint in {workdir} is at step {step}, after the end of phase 2 at step "
            f"{p1 + p2}: set --config.phase2.num_steps (or epochs) to at least {step - p1} steps"
        )


def check_resumable(meta: dict, workdir: str, run: Run, model: dict) -> None:
    """Refuses to resume a finished run, a checkpoint of another model, method or dataset, or one
    trained with other settings (see the module docstring)."""
    cfg = run.config
    if meta.get("model") != model:
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
    saved = _saved_config(meta, workdir)
    changes = config_changes(saved, config_dict(cfg)) if saved is not None else []
    if changes and not cfg.get("resume_override", False):
        raise RunError(
            f"workdir {workdir} holds a run with other settings ({_describe(changes)}); relaunch "
            "with the run's settings, pass a new --workdir, or add "
            "--config.resume_override=True to continue it with the new ones"
        )
    check_durations(meta, workdir, run)
    if changes:
        warn(
            f"resuming {workdir} at step {meta['step']} with changed settings "
            f"({_describe(changes, limit=len(changes))}), as --config.resume_override=True asks"
        )


def restore_latest(
    ckpt: Checkpointer, run: Run, model: dict, abstract_state: Callable[[int], PyTree]
) -> tuple[PyTree, dict] | None:
    """The newest intact checkpoint of the workdir as ``(tree, meta)``, or ``None`` if it has none.

    Args:
      ckpt: the workdir's checkpointer.
      run: the run that would resume it.
      model: this run's :func:`model_meta`.
      abstract_state: ``phase -> abstract {'train', 'ewc'} tree`` (the restore target).

    Raises:
      RunError: the checkpoint belongs to another run, or none is readable.
    """
    try:
        resumed = ckpt.restore_good(
            lambda meta: abstract_state(int(meta["phase"])),
            lambda meta: check_resumable(meta, ckpt.workdir, run, model),
        )
    except CorruptCheckpointError as e:
        raise RunError(f"{e}; move the workdir aside and start a new run") from e
    return None if resumed is None else resumed[:2]


def check_init_from(path: str, model: dict) -> None:
    """One-line RunError unless ``path`` holds a checkpoint of the same model."""
    src = Checkpointer(os.path.expanduser(path), read_only=True)
    try:
        meta = src.read_meta()
    finally:
        src.close()
    if meta is None:
        raise RunError(f"init_from {path!r} holds no checkpoint; pass a workdir of a trained run")
    other = meta.get("model", {})
    if other.get("signature") != model["signature"]:
        raise RunError(
            f"init_from {path!r} is a checkpoint of another model ({other.get('name')}, "
            f"{other.get('num_classes')} classes); use a {model['name']} run with the same "
            "overrides and number of classes"
        )


def init_from(path: str, params: PyTree, *, sharding) -> tuple[PyTree, PyTree]:
    """``(params, batch_stats)``: ``params`` with the backbone of the checkpoint in ``path``, and
    that checkpoint's batch statistics (checked beforehand by :func:`check_init_from`)."""
    try:
        loaded, loaded_bs, _ = restore_params_only(path, sharding=sharding)
    except (CorruptCheckpointError, FileNotFoundError) as e:
        raise RunError(f"init_from {path!r}: {e}; pass a workdir with an intact checkpoint") from e
    return {**params, "backbone": loaded["backbone"]}, loaded_bs
