"""Loading a trained run for notebooks and the evaluation CLI.

>>> run = nm_hebb_jax.load_run("runs/quickstart")          # doctest: +SKIP
>>> z = run.embed(images)          # uint8 [N, H, W, 3] -> float32 [N, D]
>>> y = run.predict(images)        # -> int [N]
>>> metrics = run.evaluate()       # the config's eval split; or run.evaluate((images, labels))
"""

from __future__ import annotations

import dataclasses
import os
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nm_hebb_jax.errors import CorruptCheckpointError, LoadError, warn
from nm_hebb_jax.eval import filters as F
from nm_hebb_jax.eval import metrics as MT
from nm_hebb_jax.models import collect_taps
from nm_hebb_jax.train.validate import build_model
from nm_hebb_jax.train.writer import read_config

__all__ = ["LoadError", "LoadedRun", "load_run"]

Array = jax.Array


@dataclasses.dataclass
class LoadedRun:
    """A trained model with its config, ready for inference and evaluation.

    Attributes:
      workdir: the run directory.
      config: the run's config (from ``config.json``).
      model: the backbone module.
      variables: ``{'params', 'batch_stats'}`` of the backbone.
      meta: the checkpoint's metadata (step, phase, data statistics, ...).
    """

    workdir: str
    config: ml_collections.ConfigDict
    model: Any
    variables: dict
    meta: dict
    batch_size: int = 256

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @cached_property
    def _apply(self):
        return jax.jit(lambda v, x: self.model.apply(v, x, train=False))

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype == np.uint8:
            mean = np.asarray(self.meta["data"]["mean"], np.float32)
            std = np.asarray(self.meta["data"]["std"], np.float32)
            return (images.astype(np.float32) / 255.0 - mean) / std
        return images.astype(np.float32)

    def _batches(self, images):
        """Yields (padded float batch, number of real rows) so every call has one shape."""
        n = len(images)
        bs = self.batch_size
        for i in range(0, n, bs):
            x = self._prepare(images[i : i + bs])
            real = len(x)
            if real < bs:
                x = np.concatenate([x, np.zeros((bs - real, *x.shape[1:]), x.dtype)])
            yield x, real

    def logits_and_embeddings(self, images) -> tuple[np.ndarray, np.ndarray]:
        """``(logits [N, C], embeddings [N, D])`` for uint8 (raw) or float (normalised) images."""
        logits, embeds = [], []
        for x, real in self._batches(images):
            lg, out = self._apply(self.variables, jnp.asarray(x))
            logits.append(np.asarray(lg)[:real])
            embeds.append(np.asarray(out["embedding"])[:real])
        if not logits:
            raise LoadError("no images given")
        return np.concatenate(logits), np.concatenate(embeds)

    def embed(self, images) -> np.ndarray:
        """Penultimate embeddings, float32 ``[N, D]``."""
        return self.logits_and_embeddings(images)[1]

    def predict(self, images) -> np.ndarray:
        """Predicted class ids, int ``[N]``."""
        return np.argmax(self.logits_and_embeddings(images)[0], axis=-1)

    def kernel(self, layer: str) -> np.ndarray:
        """The kernel ``[kh, kw, C_in, C_out]`` of the conv layer ``layer``."""
        model = self.model.clone(hebb_layers=(layer,))
        x = jnp.zeros((1, *self.meta["data"]["image_shape"]), jnp.float32)
        _, state = model.apply(self.variables, x, train=False, mutable=["intermediates"])
        return np.asarray(collect_taps(state["intermediates"], (layer,))[layer][1], np.float32)

    def tap_activations(self, images, layer: str):
        """Yields the activation ``[B, h, w, C]`` of conv layer ``layer`` batch by batch.

        The activation is the one the Hebbian term reads (``hebb.activation`` of the run).
        """
        model = self.model.clone(hebb_layers=(layer,))

        @jax.jit
        def tap(variables, x):
            _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
            return collect_taps(state["intermediates"], (layer,))[layer][0]

        for x, real in self._batches(images):
            yield np.asarray(tap(self.variables, jnp.asarray(x)), np.float32)[:real]

    def receptive_field(self, layer: str):
        """The input region each position of ``layer``'s activation sees (measured by gradient).

        Returns:
          A :class:`nm_hebb_jax.eval.patches.ReceptiveField` in input pixels.
        """
        from nm_hebb_jax.eval.patches import receptive_field_from_gradient

        model = self.model.clone(hebb_layers=(layer,))

        def fn(x):
            _, state = model.apply(self.variables, x, train=False, mutable=["intermediates"])
            return collect_taps(state["intermediates"], (layer,))[layer][0].astype(jnp.float32)

        return receptive_field_from_gradient(fn, tuple(self.meta["data"]["image_shape"]))

    def tap_statistics(self, images, labels, layers) -> dict:
        """Kernels and class-mean activations of the tapped ``layers`` over ``images``.

        Activations are clamped at 0 before averaging: the class selectivity index (Morcos et al.
        2018) is defined for non-negative (post-ReLU) responses; with the default ``'post'`` tap
        of a ReLU layer this changes nothing, with ``'pre'`` it selects the rectified response.
        """
        model = self.model.clone(hebb_layers=tuple(layers))
        fn = jax.jit(
            lambda v, x: collect_taps(
                model.apply(v, x, train=False, mutable=["intermediates"])[1]["intermediates"],
                layers,
            )
        )
        num_classes = int(self.meta["model"]["num_classes"])
        acc = {name: F.ClassMeanAccumulator(num_classes) for name in layers}
        kernels = {}
        labels = np.asarray(labels)
        start = 0
        for x, real in self._batches(images):
            taps = fn(self.variables, jnp.asarray(x))
            for name, (act, kernel) in taps.items():
                rectified = np.maximum(np.asarray(act, np.float32)[:real], 0.0)
                acc[name].update(rectified, labels[start : start + real])
                kernels[name] = np.asarray(kernel, np.float32)
            start += real
        return {name: (kernels[name], acc[name].result()) for name in layers}

    def evaluate(self, data=None, *, split: str | None = None, knn_bank=None) -> dict:
        """Top-1, NMI, kNN Top-1 and filter metrics (docs/method.md, "Metrics").

        Args:
          data: ``(images, labels)`` arrays, or None for the config's eval split (``split``).
          split: split name of the run's dataset when ``data`` is None.
          knn_bank: ``(images, labels)`` of the memory bank; default: up to ``eval.knn_bank``
            training images of the run's dataset (seeded).

        Returns:
          A dict of floats (and ``num_examples``).
        """
        cfg = self.config
        if data is None:
            split = split or cfg.eval.split
            images, labels = self.dataset.get_arrays(split)
        else:
            images, labels = data
        labels = np.asarray(labels).astype(np.int64)
        num_classes = int(self.meta["model"]["num_classes"])
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise LoadError(
                f"labels must be in [0, {num_classes}) for this model; got "
                f"[{labels.min()}, {labels.max()}]: evaluate data of the dataset it was trained on"
            )
        logits, emb = self.logits_and_embeddings(images)
        out = {
            "top1": MT.top1_accuracy(logits, labels),
            "nmi": MT.nmi_score(
                emb, labels, num_classes=num_classes, n_init=cfg.eval.nmi_restarts, seed=cfg.seed
            ),
            "num_examples": int(len(labels)),
        }
        if knn_bank is None:
            bank_x, bank_y = self.dataset.get_arrays("train")
            idx = MT.sample_memory_bank(len(bank_y), max_size=cfg.eval.knn_bank, seed=cfg.seed)
            knn_bank = (bank_x[idx], bank_y[idx])
        bank_emb = self.embed(knn_bank[0])
        out["knn_top1"] = MT.knn_top1(
            emb,
            labels,
            bank_emb,
            np.asarray(knn_bank[1]),
            k=cfg.eval.knn_k,
            num_classes=num_classes,
        )
        tap = self.hebb_layers[0]
        ((kernel, means),) = self.tap_statistics(images, labels, (tap,)).values()
        out.update({f"filters/{k}": float(v) for k, v in F.filter_metrics(kernel, means).items()})
        out["filters/layer"] = tap
        out["_embeddings"] = emb
        out["_labels"] = labels
        return out

    @property
    def hebb_layers(self) -> tuple[str, ...]:
        return tuple(self.config.hebb.layers) or (self.model.default_hebb_layer,)

    @cached_property
    def dataset(self):
        from nm_hebb_jax.config_base import data_config
        from nm_hebb_jax.data import build_dataset

        return build_dataset(data_config(self.config), seed=self.config.seed)


def load_run(workdir: str, *, step: int | None = None, best: bool = False) -> LoadedRun:
    """Loads a run's config, model and variables from its checkpoint.

    The checkpoint is read as training reads it
    (:meth:`~nm_hebb_jax.train.checkpoint.Checkpointer.restore_good`): its content is checked
    against the digest saved with it, and without ``step`` a damaged newest checkpoint is skipped
    (a warning names it) for the previous intact one. A damaged ``config.json`` is replaced by the
    copy of the config the checkpoint carries, with a warning (older checkpoints have none: then
    it is an error naming the file).

    Args:
      workdir: the training run's directory.
      step: a checkpoint step (default: the newest intact one).
      best: load the best-validation checkpoint instead.

    Returns:
      A :class:`LoadedRun`.

    Raises:
      LoadError: no such workdir, config or checkpoint, or a damaged one (one line).
    """
    from nm_hebb_jax.train.checkpoint import restore_params_only

    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not os.path.isdir(workdir):
        raise LoadError(f"workdir {workdir} does not exist; pass the --workdir of a training run")
    damaged_config = None
    try:
        config = read_config(workdir)
    except LoadError as e:  # damaged: the checkpoint's copy may stand in
        config, damaged_config = None, e
    except FileNotFoundError as e:
        raise LoadError(str(e)) from e
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    try:
        params, batch_stats, meta = restore_params_only(
            workdir, sharding=sharding, step=step, best=best
        )
    except FileNotFoundError as e:
        raise LoadError(f"{e}; train first, or pick another --step / drop --best") from e
    except CorruptCheckpointError as e:
        if step is not None:
            advice = "pass one of them to --step, or drop --step for the newest intact checkpoint"
        elif best:
            advice = "drop --best to evaluate the newest intact regular checkpoint"
        else:
            advice = "there is nothing intact to evaluate"
        raise LoadError(f"{e}; {advice}") from e
    if config is None:
        if not isinstance(meta.get("config"), dict):
            raise damaged_config
        warn(f"{damaged_config}; using the copy saved with checkpoint step {meta['step']}")
        config = ml_collections.ConfigDict(meta["config"])
    model = build_model(config, int(meta["model"]["num_classes"]))
    variables = {"params": params["backbone"], "batch_stats": batch_stats}
    return LoadedRun(
        workdir, config, model, variables, meta, batch_size=int(config.eval.batch_size)
    )
