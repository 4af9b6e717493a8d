"""Evaluation of a Hebbian-CNN run: layer-wise decoding accuracy and pictures of every layer.

``evaluate_hebbian_workdir(workdir)`` restores the run's checkpoint (latest, or ``step``), fits the
per-layer readouts on the training split (``config.decode``) and scores them on the evaluation
split (``config.data.eval_split``, another split name, or a split of any project-format ``.npz``
file, e.g. a held-out ``test`` file), then writes ``results.json`` and pictures to
``DIR/eval/<split>_step<N>/``: the first layer's filters (``filters_layer1.png``) and, for every
layer, the top-activating image patches of its most class-selective channels
(``top_patches_layer<l>.png``; a deeper layer's weights act on feature maps, so drawing them
shows little). ``python -m nm_hebb_jax.evaluate --workdir=DIR``
dispatches here for runs whose ``config.json`` has ``kind='hebbian_cnn'``.

Reference: Miconi, "Hebbian learning with gradients", arXiv:2107.01729, 2021.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from nm_hebb_jax.data import build_dataset, load_npz_split
from nm_hebb_jax.data.zca import apply_zca
from nm_hebb_jax.errors import CorruptCheckpointError, LoadError, warn
from nm_hebb_jax.eval import patches as patches_lib
from nm_hebb_jax.eval import plots
from nm_hebb_jax.hebbian import decode as decode_lib
from nm_hebb_jax.hebbian import layers
from nm_hebb_jax.hebbian import train as train_lib
from nm_hebb_jax.hebbian.model import from_config
from nm_hebb_jax.train.writer import provenance, read_config

PATCH_ROWS = 12  # channels per top-activating-patches picture
PATCH_COLUMNS = 8  # patches per channel


def receptive_field(model, layer: int) -> patches_lib.ReceptiveField:
    """The input region each position of layer ``layer``'s (0-based) pre-pool map sees."""
    stack = []
    for i, spec in enumerate(model.specs[: layer + 1]):
        if i:
            stack.append((model.specs[i - 1].pool, model.specs[i - 1].pool, 0))
        stack.append((spec.kernel_size, 1, 0))
    return patches_lib.receptive_field_of_stack(stack)


def _layer_responses(model, params, zca, images, config) -> list[list[np.ndarray]]:
    """Per layer, the batches of its pre-pool response ``u − θ`` ``[B, H_l, W_l, N_l]``."""

    @jax.jit
    def responses(params, zca, x):
        x = apply_zca(x, zca)
        out = []
        for spec, p in zip(model.specs, params, strict=True):
            fwd = layers.layer_forward(spec, p, x)
            out.append(fwd["u"] - p["threshold"])
            x = fwd["out"]
        return out

    batch_size = int(config.decode.batch_size)
    per_layer: list[list[np.ndarray]] = [[] for _ in model.specs]
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])
        real = len(batch)
        if real < batch_size:  # one shape, one compilation
            pad = np.zeros((batch_size - real, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        for i, r in enumerate(responses(params, zca, jnp.asarray(batch))):
            per_layer[i].append(np.asarray(r, np.float32)[:real])
    return per_layer


def evaluate_hebbian_workdir(
    workdir: str,
    *,
    step: int | None = None,
    data: str | None = None,
    split: str | None = None,
    make_plots: bool = True,
    outdir: str | None = None,
) -> dict:
    """Decodes every layer of a run's checkpoint and draws its filters.

    Args:
      workdir: the training run directory (with ``config.json`` and ``checkpoints/``).
      step: checkpoint step (default: latest).
      data: an ``.npz`` file in the project format to score instead of the run's split.
      split: split name (of ``data``, default ``'test'``; else of the run's dataset, default the
        config's ``data.eval_split``).
      make_plots: write the pictures.
      outdir: where the pictures and ``results.json`` go (default
        ``<workdir>/eval/<split>_step<N>``; when that cannot be written, a warning and no files).

    Returns:
      JSON-able dict: ``decode/layer{l}/ridge`` and ``.../logistic`` accuracies, ``split``,
      ``step``, ``kind``, ``pictures`` (``layer1_filters`` and ``layer<l>`` -> PNG path) and
      ``provenance``.

    Raises:
      LoadError: no config or intact checkpoint, or data that does not fit the run (one line).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config = read_config(workdir)
    model = from_config(config)
    dataset = build_dataset(config.data, seed=config.seed)
    train_images, train_labels = dataset.get_arrays("train")
    image_shape = tuple(train_images.shape[1:])
    try:
        params, zca, step = train_lib.restore(workdir, model, image_shape, step=step)
    except FileNotFoundError as e:
        raise LoadError(str(e)) from e
    except CorruptCheckpointError as e:
        advice = "pass one of them to --step, or drop --step" if step is not None else ""
        raise LoadError(f"{e}; {advice or 'there is nothing intact to evaluate'}") from e
    if data is not None:
        if not os.path.exists(data):
            raise LoadError(f"--data {data} does not exist; pass a project-format npz")
        split = split or "test"
        arrays = load_npz_split(data, split)
        evaluation = (arrays[0], arrays[1])
        if tuple(evaluation[0].shape[1:]) != image_shape:
            raise LoadError(
                f"--data images are {tuple(evaluation[0].shape[1:])} but the run was trained on "
                f"{image_shape}"
            )
    else:
        split = split or config.data.eval_split
        evaluation = dataset.get_arrays(split)
    target = plots.writable_outdir(
        outdir or os.path.join(workdir, "eval", f"{split}_step{step}"), explicit=bool(outdir)
    )
    results = decode_lib.decode_run(
        model,
        params,
        zca,
        (train_images, train_labels),
        evaluation,
        config.decode,
        seed=config.seed,
    )
    out = {
        **results,
        "split": split,
        "step": step,
        "kind": train_lib.KIND,
        "pictures": {},
        "outdir": target,
        "provenance": provenance(config),
    }
    if target is None:
        return out
    try:
        out["pictures"] = _pictures(
            model, params, zca, config, dataset, evaluation, split, step, target, make_plots
        )
        with open(os.path.join(target, "results.json"), "w") as f:
            json.dump(out, f, indent=2, default=str)
    except OSError as e:  # a full disk: the evaluation is not lost, it is printed
        warn(
            f"writing the pictures to {target} failed ({e.strerror or e}): the results are "
            "printed without them; pass --outdir=DIR to write them elsewhere"
        )
        out["outdir"] = None
    return out


def _pictures(model, params, zca, config, dataset, evaluation, split, step, outdir, make_plots):
    """Writes the layer-1 filters and each layer's top patches; returns their paths."""
    pictures = {}
    if make_plots:
        images, labels = evaluation
        # Whole-image ZCA keeps equal channels equal, so greyscale data leaves only the sum acting.
        grey = plots.is_greyscale(images)
        pictures["layer1_filters"] = str(
            plots.plot_filter_grid(
                np.asarray(params[0]["kernel"]),
                os.path.join(outdir, "filters_layer1.png"),
                max_filters=int(config.eval.max_filters),
                title=f"Hebbian CNN layer-1 filters (step {step}; input ZCA-whitened"
                + ("; greyscale inputs)" if grey else ")"),
                color="grey" if grey else "auto",
            )
        )
        names = list(dataset.class_names) if dataset.class_names else None
        for i, acts in enumerate(_layer_responses(model, params, zca, images, config)):
            name = f"layer{i + 1}"
            chosen = patches_lib.select_channels(
                acts, labels, dataset.num_classes, rows=PATCH_ROWS, k=PATCH_COLUMNS
            )
            field = receptive_field(model, i)
            crops = patches_lib.crop_patches(
                np.asarray(images), chosen.index, chosen.position, field
            )
            idx = np.maximum(chosen.index, 0)
            classes = np.where(chosen.index >= 0, np.asarray(labels)[idx], -1)
            pictures[name] = str(
                plots.plot_top_patches(
                    crops,
                    os.path.join(outdir, f"top_patches_{name}.png"),
                    row_labels=[
                        f"ch {c} · SI {si:.2f}"
                        for c, si in zip(chosen.channels, chosen.selectivity, strict=True)
                    ],
                    patch_classes=classes,
                    class_names=names,
                    title=f"Hebbian CNN {name}: top-activating patches ({split}, step {step})",
                    note=(
                        f"response u − θ; the {len(chosen.channels)} most class-selective of "
                        f"{chosen.num_channels} channels (SI: class selectivity index); "
                        f"receptive field {field.size[0]}x{field.size[1]} px"
                    ),
                )
            )
    return pictures
