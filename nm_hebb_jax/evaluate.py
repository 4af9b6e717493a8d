"""Evaluate a checkpoint: ``python -m nm_hebb_jax.evaluate --workdir DIR [--step N | --best]
[--data FILE --split NAME] [--outdir OUT]``.

Prints one JSON line last: ``top1``, ``nmi``, ``knn_top1``, ``num_examples``, the filter metrics of
the tapped layer, ``step``, ``provenance`` and ``runtime`` (the CPU settings used: the run's own
``cpu_tuning`` and ``cpu_malloc_tuning`` unless ``--[no]cpu_tuning``/``--[no]cpu_malloc_tuning`` are
given). Writes pictures and ``results.json`` to ``--outdir``, by default
``DIR/eval/<split>_step<N>/`` (never over training artifacts).

The checkpoint is read as training reads it: verified against its digest, the newest intact one
unless ``--step`` names one (a damaged ``--step`` is refused, naming the other steps). Where the
pictures cannot be written (a read-only workdir, a full disk) a warning says so before the
evaluation runs and the results are still printed; a damaged ``config.json`` or ``metrics.jsonl``
is named.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from nm_hebb_jax import cli
from nm_hebb_jax.errors import LoadError, warn
from nm_hebb_jax.eval import plots
from nm_hebb_jax.eval.run import load_run

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training run directory.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_bool("best", False, "Evaluate the best-validation checkpoint.")
flags.DEFINE_string("data", None, "An npz file to evaluate on (default: the run's eval split).")
flags.DEFINE_string("split", None, "Split name (in --data, or of the run's dataset).")
flags.DEFINE_bool("plots", True, "Write the t-SNE map, filter grid and training curves.")
flags.DEFINE_string(
    "outdir", None, "Where the pictures and results.json go (default: DIR/eval/<split>_step<N>)."
)
flags.DEFINE_bool(
    "cpu_tuning",
    None,
    "On CPU use XLA's own convolutions (nm_hebb_jax/cpu_runtime.py); default: the run's setting.",
)
flags.DEFINE_bool(
    "cpu_malloc_tuning",
    None,
    "On CPU keep XLA's buffers in glibc's heap (cpu_runtime.tune_malloc); default: the run's "
    "setting (off for compile-bound runs such as the quickstart, on for full-size ones).",
)


def _run_config(workdir: str) -> dict:
    """A run's ``config.json`` as a dict (empty when absent or unreadable)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _run_kind(workdir: str) -> str | None:
    """The ``kind`` field of a run's ``config.json`` (None when absent or unreadable)."""
    return _run_config(workdir).get("kind")


def runtime_settings(
    workdir: str, *, cpu_tuning: bool | None = None, cpu_malloc_tuning: bool | None = None
) -> dict[str, bool]:
    """The CPU runtime settings to evaluate a run with: the given ones, else the run's own.

    A run records ``cpu_tuning`` and ``cpu_malloc_tuning`` in its ``config.json``; evaluating
    with the same settings keeps evaluation as fast as training was (the malloc setting speeds up
    execution but slows compilation, so compile-bound configs turn it off). Missing values default
    to ``True``, the config defaults.
    """
    config = _run_config(workdir)
    tuning = config.get("cpu_tuning", True) if cpu_tuning is None else cpu_tuning
    malloc = (
        config.get("cpu_malloc_tuning", True) if cpu_malloc_tuning is None else cpu_malloc_tuning
    )
    return {"cpu_tuning": bool(tuning), "cpu_malloc_tuning": bool(tuning) and bool(malloc)}


PATCH_ROWS = 12  # channels in the top-activating-patches picture
PATCH_COLUMNS = 8  # patches per channel


def _patches_file(layer: str) -> str:
    return f"top_patches_{layer.replace('/', '_')}.png"


def _top_patches_picture(run, layer, images, labels, class_names, split, path):
    """The tapped layer's most class-selective channels and their top-activating image patches."""
    from nm_hebb_jax.eval import patches

    num_classes = int(run.meta["model"]["num_classes"])
    chosen = patches.select_channels(
        run.tap_activations(images, layer),
        labels,
        num_classes,
        rows=PATCH_ROWS,
        k=PATCH_COLUMNS,
    )
    field = run.receptive_field(layer)
    crops = patches.crop_patches(np.asarray(images), chosen.index, chosen.position, field)
    classes = np.where(chosen.index >= 0, np.asarray(labels)[np.maximum(chosen.index, 0)], -1)
    return plots.plot_top_patches(
        crops,
        path,
        row_labels=[
            f"ch {c} · SI {si:.2f}"
            for c, si in zip(chosen.channels, chosen.selectivity, strict=True)
        ],
        patch_classes=classes,
        class_names=class_names,
        title=f"Top-activating patches of {layer} ({split}, step {run.step})",
        note=(
            f"the {len(chosen.channels)} most class-selective of {chosen.num_channels} channels "
            f"(SI: class selectivity index); receptive field {field.size[0]}x{field.size[1]} px"
        ),
    )


def _phase_starts(run) -> list[int]:
    """The step at which phase 2 began (``[]`` when a phase has no steps).

    The same resolution as the trainer's (``num_steps`` when >= 0, else epochs x steps per
    epoch, :func:`nm_hebb_jax.train.loop.phase_steps`).
    """
    config = run.config
    spe = None

    def steps(phase) -> int:
        nonlocal spe
        if phase.num_steps >= 0:
            return int(phase.num_steps)
        spe = spe or run.dataset.steps_per_epoch(config.batch_size)
        return int(round(phase.epochs * spe))

    first, second = steps(config.phase1), steps(config.phase2)
    return [first] if first > 0 and second > 0 else []


def evaluate_workdir(
    workdir: str,
    *,
    step=None,
    best=False,
    data=None,
    split=None,
    make_plots=True,
    outdir: str | None = None,
) -> dict:
    """Evaluates a run's checkpoint and writes its artifacts; returns the JSON-able results.

    ``outdir`` (default ``<workdir>/eval/<split>_step<N>``) is checked before the evaluation runs;
    when the default one cannot be written, or writing fails midway, a warning says so and the
    results are returned without pictures (``outdir`` None in them).
    """
    from nm_hebb_jax.train.writer import provenance

    if step is not None and best:
        raise LoadError("pass either --step or --best, not both")
    if _run_kind(workdir) == "hebbian_cnn":
        from nm_hebb_jax.hebbian.evaluate import evaluate_hebbian_workdir

        if best:
            raise LoadError("a Hebbian-CNN run has no best checkpoint; drop --best")
        return evaluate_hebbian_workdir(
            workdir, step=step, data=data, split=split, make_plots=make_plots, outdir=outdir
        )
    run = load_run(workdir, step=step, best=best)
    if data is not None:
        from nm_hebb_jax.data import load_npz_split

        split = split or "test"
        if not os.path.exists(data):
            raise LoadError(f"--data {data} does not exist; pass an npz file in the project format")
        arrays = load_npz_split(data, split)
        images, labels = arrays[0], arrays[1]
        expect = tuple(run.meta["data"]["image_shape"])
        if tuple(images.shape[1:]) != expect:
            raise LoadError(
                f"--data images are {tuple(images.shape[1:])} but the model was trained on "
                f"{expect}; evaluate data of the same dataset"
            )
        target = plots.writable_outdir(outdir or _default_outdir(run, split), explicit=bool(outdir))
        results = run.evaluate((images, labels))
    else:
        split = split or run.config.eval.split
        target = plots.writable_outdir(outdir or _default_outdir(run, split), explicit=bool(outdir))
        images = run.dataset.get_arrays(split)[0]
        results = run.evaluate(split=split)
    emb, labels = results.pop("_embeddings"), results.pop("_labels")
    out = {
        **{k: v for k, v in results.items()},
        "split": split,
        "step": run.step,
        "phase": run.meta.get("phase"),
        "method": run.config.method,
        "model": run.meta["model"]["name"],
        "pictures": {},
        "outdir": target,
        "provenance": provenance(run.config),
    }
    if target is not None:
        try:
            out["pictures"] = _pictures(run, split, images, emb, labels, target, make_plots)
            with open(os.path.join(target, "results.json"), "w") as f:
                json.dump(out, f, indent=2, default=str)
        except OSError as e:  # a full disk: the evaluation is not lost, it is printed
            warn(
                f"writing the pictures to {target} failed ({e.strerror or e}): the results are "
                "printed without them; pass --outdir=DIR to write them elsewhere"
            )
            out["outdir"] = None
    return out


def _default_outdir(run, split: str) -> str:
    return os.path.join(run.workdir, "eval", f"{split}_step{run.step}")


def _pictures(run, split, images, emb, labels, outdir, make_plots) -> dict:
    """Writes the t-SNE map, filter grid, top patches and training curves; returns their paths."""
    pictures = {}
    if make_plots:
        names = run.meta["data"].get("class_names")
        pictures["tsne"] = plots.plot_embedding_tsne(
            emb,
            labels,
            os.path.join(outdir, "tsne.png"),
            class_names=names,
            max_points=run.config.eval.tsne_points,
            seed=run.config.seed,
            title=f"t-SNE of embeddings ({split}, step {run.step})",
        )
        first = run.model.conv_layer_names()[0]
        kernel = run.kernel(first)
        grey = plots.is_greyscale(images)  # then only each filter's sum over R, G, B acts
        pictures["filters"] = plots.plot_filter_grid(
            kernel,
            os.path.join(outdir, "filters_first_layer.png"),
            title=f"First-layer filters ({first}, step {run.step}"
            + ("; greyscale inputs)" if grey else ")"),
            color="grey" if grey else "auto",
        )
        tap = run.hebb_layers[0]
        pictures["patches"] = _top_patches_picture(
            run, tap, images, labels, names, split, os.path.join(outdir, _patches_file(tap))
        )
        curves = os.path.join(run.workdir, "metrics.jsonl")
        if os.path.exists(curves):
            pictures["curves"] = plots.plot_training_curves(
                curves,
                os.path.join(outdir, "training_curves.png"),
                title=(
                    f"Training curves: {run.config.method}, {run.meta['model']['name']}, "
                    f"{run.config.data.name}"
                ),
                phase_starts=_phase_starts(run),
            )
    return pictures


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.workdir:
        print("error: --workdir is required (the directory of a training run)", file=sys.stderr)
        sys.exit(2)
    runtime = runtime_settings(
        FLAGS.workdir, cpu_tuning=FLAGS.cpu_tuning, cpu_malloc_tuning=FLAGS.cpu_malloc_tuning
    )
    if runtime["cpu_tuning"]:
        from nm_hebb_jax import cpu_runtime

        # before JAX starts its backend
        cpu_runtime.configure(malloc=runtime["cpu_malloc_tuning"])
        runtime["malloc_applied"] = cpu_runtime.malloc_applied()
    # The project's errors (workdir, step, data, a damaged checkpoint) are one line, exit 2.
    with cli.reported(interrupted="interrupted (Ctrl-C); nothing was printed"):
        out = evaluate_workdir(
            FLAGS.workdir,
            step=FLAGS.step,
            best=FLAGS.best,
            data=FLAGS.data,
            split=FLAGS.split,
            make_plots=FLAGS.plots,
            outdir=FLAGS.outdir,
        )
    print(json.dumps({**out, "runtime": runtime}, default=str))


if __name__ == "__main__":
    cli.run(main)
