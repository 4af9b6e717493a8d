"""Evaluation of a Hebbian-CNN run: layer-wise decoding accuracy and pictures of every layer.

``evaluate_hebbian_workdir(workdir)`` restores the run's checkpoint (latest, or ``step``), fits the
per-layer readouts on the training split (``config.decode``) and scores them on the evaluation
split (``config.data.eval_split``, another split name, or a split of any project-format ``.npz``
file, e.g. a held-out ``test`` file), then writes each layer's filters (``plot_filter_grid``) and
``results.json`` to ``DIR/eval/<split>_step<N>/``. ``python -m nm_hebb_jax.evaluate --workdir=DIR``
dispatches here for runs whose ``config.json`` has ``kind='hebbian_cnn'``.

Reference: Miconi, "Hebbian learning with gradients", arXiv:2107.01729, 2021.
"""

from __future__ import annotations

import json
import os

import numpy as np

from nm_hebb_jax.data import build_dataset, load_npz_split
from nm_hebb_jax.errors import LoadError
from nm_hebb_jax.eval import plots
from nm_hebb_jax.hebbian import decode as decode_lib
from nm_hebb_jax.hebbian import train as train_lib
from nm_hebb_jax.hebbian.model import from_config
from nm_hebb_jax.train.writer import provenance, read_config


def evaluate_hebbian_workdir(
    workdir: str,
    *,
    step: int | None = None,
    data: str | None = None,
    split: str | None = None,
    make_plots: bool = True,
) -> dict:
    """Decodes every layer of a run's checkpoint and draws its filters.

    Args:
      workdir: the training run directory (with ``config.json`` and ``checkpoints/``).
      step: checkpoint step (default: latest).
      data: an ``.npz`` file in the project format to score instead of the run's split.
      split: split name (of ``data``, default ``'test'``; else of the run's dataset, default the
        config's ``data.eval_split``).
      make_plots: write the filter pictures.

    Returns:
      JSON-able dict: ``decode/layer{l}/ridge`` and ``.../logistic`` accuracies, ``split``,
      ``step``, ``kind``, ``pictures`` (layer name -> PNG path) and ``provenance``.

    Raises:
      LoadError: no config or checkpoint, or data that does not fit the run (one line).
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
    results = decode_lib.decode_run(
        model,
        params,
        zca,
        (train_images, train_labels),
        evaluation,
        config.decode,
        seed=config.seed,
    )
    outdir = os.path.join(workdir, "eval", f"{split}_step{step}")
    os.makedirs(outdir, exist_ok=True)
    pictures = {}
    if make_plots:
        for i, p in enumerate(params):
            kernel = np.asarray(p["kernel"])
            name = f"layer{i + 1}"
            pictures[name] = str(
                plots.plot_filter_grid(
                    kernel,
                    os.path.join(outdir, f"filters_{name}.png"),
                    max_filters=int(config.eval.max_filters),
                    title=f"Hebbian CNN {name} filters (step {step})",
                )
            )
    out = {
        **results,
        "split": split,
        "step": step,
        "kind": train_lib.KIND,
        "pictures": pictures,
        "provenance": provenance(config),
    }
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(out, f, indent=2, default=str)
    return out
