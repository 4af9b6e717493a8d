"""What a workdir's checkpoints may be resumed or initialised from, and the metadata they carry.

A checkpoint's metadata names the method, the dataset, the model (name, classes, width/depth
overrides and a signature of the parameter shapes) and the data's normalisation. A workdir is
resumed only by a run of the same method, dataset and model, and never once it holds a finished
run; ``init_from`` takes the backbone of another run of the same model. Every refusal is a one-line
:class:`~nm_hebb_jax.errors.RunError` raised before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from nm_hebb_jax.errors import RunError
from nm_hebb_jax.train.checkpoint import (
    Checkpointer,
    CorruptCheckpointError,
    restore_params_only,
    tree_signature,
)
from nm_hebb_jax.train.validate import Run, model_overrides

PyTree = Any


def model_meta(run: Run, abstract_backbone: PyTree) -> dict:
    """The model's identity as a checkpoint records it (its signature hashes the param shapes)."""
    sig = json.dumps(tree_signature(abstract_backbone), sort_keys=True)
    return {
        "name": run.config.model.name,
        "num_classes": run.num_classes,
        "overrides": {k: str(v) for k, v in model_overrides(run.config).items()},
        "signature": hashlib.sha256(sig.encode()).hexdigest()[:16],
    }


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
    }


def check_resumable(meta: dict, workdir: str, run: Run, model: dict) -> None:
    """Refuses to resume a finished run or a checkpoint of another model, method or dataset."""
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
        resumed = ckpt.restore_latest_good(
            lambda meta: abstract_state(int(meta["phase"])),
            lambda meta: check_resumable(meta, ckpt.workdir, run, model),
        )
    except (RunError, CorruptCheckpointError) as e:
        raise RunError(str(e)) from e
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
    loaded, loaded_bs, _ = restore_params_only(path, sharding=sharding)
    return {**params, "backbone": loaded["backbone"]}, loaded_bs
