"""Unsupervised training of the Hebbian CNN (Miconi 2021), resumable from its workdir.

``train_and_evaluate_hebbian(config, workdir)``: builds the dataset (``config.data``), estimates
the whole-image ZCA matrix on ``config.zca_images`` training images (seeded), then runs
``num_steps`` (or ``epochs`` × steps per epoch) batches; batch ``s`` is a pure function of
``(seed, s)`` (:meth:`nm_hebb_jax.data.Dataset.stream_indices` plus seeded flips), so a run
resumed from a checkpoint reproduces the uninterrupted one. The first ``warmup_batches`` batches
adapt thresholds only. Each layer's step is one ``jax.jit`` function compiled once (the warm-up
switch is a traced scalar). Checkpoints (``Checkpointer``) hold ``{'layers', 'zca', 'step'}``;
``config.json``, ``metrics.jsonl`` and ``tb/`` are written to the workdir. At the end the layers
are decoded (``config.decode``) on the evaluation split.

Reference: Miconi, "Hebbian learning with gradients", arXiv:2107.01729, 2021.
"""

from __future__ import annotations

import contextlib
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from nm_hebb_jax.data import build_dataset
from nm_hebb_jax.data.zca import apply_zca, fit_zca
from nm_hebb_jax.errors import CorruptCheckpointError, NonFiniteError, RunError
from nm_hebb_jax.hebbian import decode as decode_lib
from nm_hebb_jax.hebbian.model import HebbianCNN, Params, from_config
from nm_hebb_jax.losses.hebbian_rules import RULES
from nm_hebb_jax.train import workdir as W
from nm_hebb_jax.train.checkpoint import Checkpointer
from nm_hebb_jax.train.writer import MetricWriter, provenance, write_config

KIND = "hebbian_cnn"
_TAG_ZCA = 0x2CA
_TAG_FLIP = 0xF11


def check_config(config) -> None:
    """Raises a one-line :class:`~nm_hebb_jax.errors.RunError` on a bad config value."""
    if config.get("kind") != KIND:
        raise RunError(f"config.kind={config.get('kind')!r} must be {KIND!r}")
    if config.rule not in RULES:
        raise RunError(f"rule={config.rule!r} must be one of {RULES}")
    checks = {
        "batch_size": config.batch_size >= 1,
        "epochs": config.epochs > 0 or config.num_steps > 0,
        "warmup_batches": config.warmup_batches >= 0,
        "zca_images": config.zca_images >= 2,
        "zca_eps": config.zca_eps > 0,
        "homeostasis_rate": config.homeostasis_rate >= 0,
        "k_winners": config.k_winners >= 1 and all(config.k_winners <= c for c in config.channels),
        "ckpt.every_steps": config.ckpt.every_steps >= 1,
        "log.every_steps": config.log.every_steps >= 1,
        "decode.batch_size": config.decode.batch_size >= 1,
    }
    for name, ok in checks.items():
        if not ok:
            value = config
            for part in name.split("."):
                value = value[part]
            raise RunError(f"config.{name}={value!r} is out of range")
    if any(lr < 0 for lr in config.lrs):
        raise RunError(f"lrs={tuple(config.lrs)} must be >= 0")
    try:
        from_config(config)  # checks channels/kernel_sizes/lrs lengths and prune_prob
    except ValueError as e:
        raise RunError(str(e)) from e


def total_steps(config, train_size: int) -> int:
    """``num_steps`` if > 0, else ``ceil(epochs · ceil(train_size / batch_size))``."""
    if config.num_steps > 0:
        return int(config.num_steps)
    return int(math.ceil(float(config.epochs) * math.ceil(train_size / config.batch_size)))


def train_batch(dataset, images: np.ndarray, step: int, config) -> np.ndarray:
    """The uint8 images of batch ``step``: stream rows, flipped at random when ``config.flip``."""
    rows = dataset.stream_indices(step, batch_size=config.batch_size)
    batch = images[rows]
    if config.flip:
        flips = np.random.default_rng([config.seed, _TAG_FLIP, step]).random(len(batch)) < 0.5
        batch = np.where(flips[:, None, None, None], batch[:, :, ::-1], batch)
    return batch


def _tree(params: Params, zca, step: int) -> dict:
    return {"layers": params, "zca": zca, "step": jnp.asarray(step, jnp.int32)}


def abstract_tree(model: HebbianCNN, image_shape) -> dict:
    """The checkpoint pytree's shapes (for ``Checkpointer.restore``)."""
    d = int(np.prod(image_shape))
    return jax.eval_shape(
        lambda: _tree(model.init(jax.random.key(0), image_shape), jnp.zeros((d, d)), 0)
    )


def restore(workdir: str, model: HebbianCNN, image_shape, *, step: int | None = None):
    """``(params, zca, step)`` of a workdir's checkpoint (the newest intact one by default;
    verified, :meth:`~nm_hebb_jax.train.checkpoint.Checkpointer.restore_good`)."""
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        target = abstract_tree(model, image_shape)
        restored = ckpt.restore_good(lambda meta: target, step=step)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}")
    tree = restored[0]
    return tree["layers"], tree["zca"], int(tree["step"])


def train_and_evaluate_hebbian(config, workdir: str) -> dict:
    """Trains the Hebbian CNN (resuming from ``workdir``) and decodes each layer at the end.

    Args:
      config: a ``configs/hebbian_cnn.py`` config.
      workdir: run directory (checkpoints, ``config.json``, ``metrics.jsonl``, ``results.json``).

    Returns:
      JSON-able summary: ``step``, ``total_steps``, ``train_seconds``, ``steps_per_s``, the
      ``decode/...`` accuracies (when ``decode.at_end``), ``stopped`` (True when
      ``stop_after_step`` cut the run short) and ``provenance``.

    Raises:
      RunError: a bad config value (one line).
      WorkdirError: the workdir is a file, not writable, or in use by another run.
      StorageError: writing the workdir failed (a full disk); the saved checkpoints are kept.
    """
    check_config(config)
    with W.hold(workdir) as path:  # one run writes to a workdir
        ckpt = None
        try:
            ckpt = Checkpointer(path, keep=int(config.ckpt.keep))
            return _train(config, path, ckpt)
        except BaseException as e:
            last = None
            if ckpt is not None:
                with contextlib.suppress(Exception):
                    last = ckpt.latest_step()
                ckpt.discard_partial()
                with contextlib.suppress(Exception):
                    ckpt.close()
            failure = W.storage_error(e, path, last)
            if failure is not None:
                raise failure from e
            raise


def _train(config, workdir: str, ckpt: Checkpointer) -> dict:
    write_config(workdir, config)
    dataset = build_dataset(config.data, seed=config.seed)
    images, labels = dataset.get_arrays("train")
    image_shape = tuple(images.shape[1:])
    model = from_config(config)
    model.output_shapes(image_shape)
    steps = total_steps(config, len(images))

    writer = MetricWriter(workdir)
    resumed = None
    target = abstract_tree(model, image_shape)
    try:
        restored = ckpt.restore_good(lambda meta: target)
    except CorruptCheckpointError as e:
        raise RunError(f"{e}; move the workdir aside and start a new run") from e
    if restored is not None:
        tree, resumed, _ = restored
        params, zca, step = tree["layers"], tree["zca"], int(tree["step"])
    else:
        n = min(int(config.zca_images), len(images))
        rows = np.random.default_rng([config.seed, _TAG_ZCA]).choice(len(images), n, replace=False)
        zca = fit_zca(images[np.sort(rows)], eps=float(config.zca_eps))
        params = model.init(jax.random.key(config.seed), image_shape)
        step = 0

    prep = jax.jit(apply_zca)
    meta = {"kind": KIND, "image_shape": list(image_shape), "total_steps": steps}
    progress = writer.progress(
        total=steps, initial=step, desc="hebbian", enabled=bool(config.log.progress)
    )
    t0, first = time.time(), step
    stopped = False
    while step < steps:
        x = prep(jnp.asarray(train_batch(dataset, images, step, config)), zca)
        learn = jnp.float32(step >= config.warmup_batches)
        params, metrics = model.train_step(params, x, learn)
        step += 1
        progress.update(1)
        if step % config.log.every_steps == 0 or step == steps:
            values = {k: float(v) for k, v in metrics.items()}
            if not all(math.isfinite(v) for v in values.values()):
                bad = ", ".join(sorted(k for k, v in values.items() if not math.isfinite(v)))
                raise NonFiniteError(
                    f"non-finite update at step {step} ({bad}); the last checkpoint is step "
                    f"{ckpt.latest_step()} in {workdir}: lower --config.lrs"
                )
            values["steps_per_s"] = (step - first) / max(time.time() - t0, 1e-9)
            writer.scalars(step, values)
        if step % config.ckpt.every_steps == 0 or step == steps or step == config.stop_after_step:
            ckpt.save(step, _tree(params, zca, step), {**meta, "step": step})
        if step == config.stop_after_step:
            stopped = True
            break
    progress.close()
    train_seconds = time.time() - t0
    summary = {
        "step": step,
        "total_steps": steps,
        "train_seconds": train_seconds,
        "steps_per_s": (step - first) / max(train_seconds, 1e-9),
        "stopped": stopped,
    }
    if ckpt.latest_step() != step:
        ckpt.save(step, _tree(params, zca, step), {**meta, "step": step})
    ckpt.close()
    if config.decode.at_end and not stopped:
        val = dataset.get_arrays(config.data.eval_split)
        summary.update(
            decode_lib.decode_run(
                model, params, zca, (images, labels), val, config.decode, seed=config.seed
            )
        )
        summary["split"] = config.data.eval_split
    writer.close()
    summary["provenance"] = provenance(config, resumed_from=resumed)
    if not stopped:
        writer.append_jsonl("results.jsonl", summary)
    return summary
