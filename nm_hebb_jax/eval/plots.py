"""Pictures of a trained model: t-SNE map, filter grid, top-activating patches, training curves.

docs/method.md, section "Metrics", "Pictures". Every function renders one figure with
matplotlib's Agg (raster, headless) backend, writes it as a PNG (parent folders are created) and
returns the path.

Figures are built as ``matplotlib.figure.Figure`` objects attached to an Agg canvas
(``FigureCanvasAgg``) rather than through ``pyplot``: the Agg backend is thus set inside this module
for every figure, no display is needed, nothing is left in pyplot's global figure registry, and
importing this module never changes the backend of a caller's interactive session (e.g. a notebook).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from nm_hebb_jax.errors import LoadError, warn

ArrayLike = npt.ArrayLike
"""Anything ``np.asarray`` accepts: numpy arrays, jax arrays, nested lists."""
PathLike = str | os.PathLike
Record = Mapping[str, object]
"""One logged row: ``{'step': int, 'train/loss': float, ...}``."""

_DPI = 120


def writable_outdir(path: str, *, explicit: bool) -> str | None:
    """``path`` created and writable, or None (with a warning) when the default one is not.

    Raises:
      LoadError: an explicit ``--outdir`` that cannot be written.
    """
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        if explicit:
            raise LoadError(
                f"--outdir {path} cannot be written ({e.strerror}): pass a writable directory"
            ) from None
        warn(
            f"cannot write to {path} ({e.strerror}): the results are printed without pictures "
            "or results.json; pass --outdir=DIR to write them elsewhere"
        )
        return None
    return path


def _new_figure(width: float, height: float) -> Figure:
    """A figure with an Agg canvas attached (headless, no pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    """Writes ``fig`` as PNG to ``path`` (creating parent folders) and returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=_DPI, bbox_inches="tight")
    return out


# --------------------------------------------------------------------------------------------------
# t-SNE map of embeddings
# --------------------------------------------------------------------------------------------------


def _stratified_subsample(labels: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` rows keeping the class proportions.

    Class quotas follow the largest-remainder rule (floor of the proportional share, the left-over
    points go to the classes with the largest fractional parts, lower class id first on ties); the
    examples inside a class are a seeded random choice.
    """
    n = labels.shape[0]
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * (max_points / n)
    quota = np.floor(share).astype(np.int64)
    left = max_points - int(quota.sum())
    order = np.lexsort((classes, -(share - quota)))  # largest remainder first, then class id
    quota[order[:left]] += 1
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:q]
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def plot_embedding_tsne(
    embeddings: ArrayLike,
    labels: ArrayLike,
    path: PathLike,
    *,
    class_names: Sequence[str] | None = None,
    max_points: int = 2000,
    seed: int = 0,
    normalize: bool = True,
    title: str = "t-SNE of the embeddings",
) -> Path:
    """2-D t-SNE map of embeddings, one colour per class.

    The rows are first subsampled to at most ``max_points`` keeping the class proportions
    (stratified, seeded), optionally L2-normalised (so Euclidean t-SNE distances follow the cosine
    geometry used by kNN Top-1 and NMI), and embedded with ``sklearn.manifold.TSNE(n_components=2,
    perplexity=min(30, (n - 1) / 3), init='pca', learning_rate='auto', random_state=seed)``
    (van der Maaten & Hinton 2008). Colours: ``tab10`` for up to 10 classes, ``tab20`` for up to 20
    (a class keeps the colour of its id when the ids fit the palette), with a legend; for more than
    20 classes a continuous ``turbo`` map over the class id with a colourbar and no legend.

    Args:
        embeddings: ``[N, D]`` embeddings.
        labels: ``[N]`` integer class ids.
        path: output PNG path.
        class_names: optional names indexed by class id, used in the legend.
        max_points: largest number of points drawn.
        seed: seed of the subsample and of t-SNE.
        normalize: L2-normalise the embeddings before t-SNE.
        title: figure title.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: on inconsistent shapes or fewer than 4 points after subsampling.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need embeddings [N, D] and labels [N], got {x.shape} and {y.shape}.")
    keep = _stratified_subsample(y, max_points, seed)
    x, y = x[keep], y[keep]
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}.")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = min(30.0, (n - 1) / 3.0)
    xy = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
    ).fit_transform(x)

    classes = np.unique(y)
    num = classes.size
    fig = _new_figure(7.5 if num <= 20 else 7.0, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    size = float(np.clip(3000.0 / n, 4.0, 30.0))
    if num <= 20:
        palette = matplotlib.colormaps["tab10" if num <= 10 else "tab20"]
        by_id = classes.max() < palette.N  # same class -> same colour across plots
        for rank, c in enumerate(classes):
            sel = y == c
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(
                xy[sel, 0],
                xy[sel, 1],
                s=size,
                color=palette(int(c) if by_id else rank),
                label=name,
                alpha=0.8,
                linewidths=0,
            )
        ax.legend(
            title="class",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            markerscale=max(1.0, 30.0 / size) ** 0.5,
            frameon=False,
        )
    else:
        cmap = matplotlib.colormaps["turbo"]
        points = ax.scatter(
            xy[:, 0],
            xy[:, 1],
            s=size,
            c=y,
            cmap=cmap,
            norm=Normalize(vmin=classes.min(), vmax=classes.max()),
            alpha=0.8,
            linewidths=0,
        )
        fig.colorbar(points, ax=ax, label="class id")
    ax.set_title(title)
    ax.set_xlabel("t-SNE dimension 1")
    ax.set_ylabel("t-SNE dimension 2")
    ax.text(
        0.01,
        0.01,
        f"n = {n}, {num} classes, perplexity = {perplexity:.3g}",
        transform=ax.transAxes,
        fontsize=8,
        color="0.3",
        va="bottom",
    )
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Filter grid
# --------------------------------------------------------------------------------------------------


def _normalize01(x: np.ndarray) -> np.ndarray:
    """Min-max scales ``x`` to ``[0, 1]``; a constant array becomes 0.5."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12:
        return np.full_like(x, 0.5)
    return (x - lo) / (hi - lo)


def is_greyscale(images: ArrayLike, sample: int = 256) -> bool:
    """Whether images (the first ``sample``) are greyscale stored as three equal channels.

    A first-layer filter then acts only through its sum over the input channels, so
    :func:`plot_filter_grid` should draw it with ``color='grey'``.
    """
    x = np.asarray(images[:sample])
    return x.shape[-1] == 3 and bool(
        (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()
    )


def plot_filter_grid(
    kernel: ArrayLike,
    path: PathLike,
    *,
    max_filters: int = 64,
    title: str = "First-layer filters",
    color: str = "auto",
) -> Path:
    """The first ``max_filters`` filters of a conv layer as small images in a near-square grid.

    With ``C_in == 3`` (and ``color='auto'``) each filter is shown as an RGB image, min-max
    normalised per filter (over its three channels together) to ``[0, 1]``; otherwise, or with
    ``color='grey'`` (e.g. for greyscale images stored as three equal channels, where only the sum
    over the input channels acts), the filter is averaged over ``C_in`` and shown in grey, also
    min-max normalised per filter (black = its most negative, white = its most positive weight).
    The grid has ``ceil(sqrt(n))`` columns; filter ``i`` sits at row ``i // cols``, column
    ``i % cols``; small filters are enlarged by pixel repetition and a thin gap separates them
    (white for RGB, light blue for grey filters).

    Args:
        kernel: ``[kh, kw, C_in, C_out]`` Flax ``Conv`` kernel.
        path: output PNG path.
        max_filters: largest number of filters shown (the first ones by output index).
        title: figure title.
        color: ``'auto'`` (RGB for 3 input channels, else grey) or ``'grey'``.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: if ``kernel`` is not 4-D, ``max_filters < 1`` or ``color`` is unknown.
    """
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"kernel must be [kh, kw, C_in, C_out], got shape {w.shape}.")
    if max_filters < 1:
        raise ValueError(f"max_filters must be >= 1, got {max_filters}.")
    if color not in ("auto", "grey"):
        raise ValueError(f"color must be 'auto' or 'grey', got {color!r}.")
    kh, kw, c_in, c_out = w.shape
    n = min(c_out, max_filters)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    rgb = c_in == 3 and color == "auto"
    up = max(1, math.ceil(12 / max(kh, kw)))  # each weight drawn as up x up pixels
    ch, cw, gap = kh * up, kw * up, 2  # cell size and the gap between cells
    # Gaps: white between RGB filters; light blue between grey ones, so white weights stay visible.
    background = (1.0, 1.0, 1.0) if rgb else (0.62, 0.76, 0.92)
    mosaic = np.empty((rows * (ch + gap) - gap, cols * (cw + gap) - gap, 3))
    mosaic[...] = background
    for i in range(n):
        f = w[..., i]
        img = _normalize01(f) if rgb else np.repeat(_normalize01(f.mean(axis=-1))[..., None], 3, -1)
        img = np.repeat(np.repeat(img, up, axis=0), up, axis=1)
        r, c = divmod(i, cols)
        mosaic[r * (ch + gap) : r * (ch + gap) + ch, c * (cw + gap) : c * (cw + gap) + cw] = img

    cell = min(0.9, max(0.35, 7.0 / cols))
    fig = _new_figure(max(4.0, cols * cell), max(3.0, rows * cell * kh / kw + 0.9))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"filter index = row x {cols} + column (row-major)", fontsize=8)
    mode = "RGB" if rgb else f"grey, mean over {c_in} input channels"
    ax.set_title(
        f"{title}\n{n} of {c_out} filters, {kh}x{kw}x{c_in}; {mode}; min-max normalised per filter",
        fontsize=9,
    )
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Top-activating patches
# --------------------------------------------------------------------------------------------------


def plot_top_patches(
    patches: ArrayLike,
    path: PathLike,
    *,
    row_labels: Sequence[str],
    patch_classes: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "Top-activating patches",
    note: str = "",
) -> Path:
    """A grid of image patches: one row per channel, its top-activating patches left to right.

    Patches are enlarged by pixel repetition to about 56 pixels and framed by a one-pixel grey
    line (drawn over the patch's edge); a patch's class (when given) is written under it. Grey
    (128) parts of a patch lie outside the image (zero padding).

    Args:
        patches: uint8 ``[R, K, ph, pw, 3]`` (from :func:`nm_hebb_jax.eval.patches.crop_patches`).
        path: output PNG path.
        row_labels: ``R`` labels, drawn left of the rows (e.g. ``'ch 12 · SI 0.41'``).
        patch_classes: optional int ``[R, K]`` class ids (``-1`` = none).
        class_names: names indexed by class id for ``patch_classes``.
        title: figure title.
        note: a second, smaller title line (e.g. how the rows were chosen).

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: on inconsistent shapes.
    """
    p = np.asarray(patches)
    if p.ndim != 5 or p.shape[-1] not in (1, 3) or len(row_labels) != p.shape[0]:
        raise ValueError(
            f"need patches [R, K, ph, pw, 3] and R row labels, got {p.shape} and {len(row_labels)}"
        )
    if p.shape[-1] == 1:
        p = np.repeat(p, 3, axis=-1)
    rows, cols, ph, pw = p.shape[:4]
    up = max(1, round(56 / max(ph, pw)))
    ch, cw = ph * up, pw * up
    gap_x, gap_y = 4, (14 if patch_classes is not None else 4)
    height, width = rows * (ch + gap_y), cols * (cw + gap_x) - gap_x
    mosaic = np.full((height, width, 3), 255, np.uint8)
    for r in range(rows):
        for k in range(cols):
            img = np.repeat(np.repeat(p[r, k], up, axis=0), up, axis=1)
            y, x = r * (ch + gap_y), k * (cw + gap_x)
            mosaic[y : y + ch, x : x + cw] = img
            # a one-pixel grey frame, so white patches stay visible on the white page
            mosaic[y : y + ch, [x, x + cw - 1]] = 150
            mosaic[[y, y + ch - 1], x : x + cw] = 150
    inch = 1.0 / 100.0  # mosaic pixels drawn at about 100 per inch
    fig = _new_figure(max(4.0, width * inch + 1.6), height * inch + 0.9)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (ch + gap_y) + ch / 2 for r in range(rows)])
    ax.set_yticklabels(list(row_labels), fontsize=7)
    ax.tick_params(axis="y", length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if patch_classes is not None:
        classes = np.asarray(patch_classes)
        for r in range(rows):
            for k in range(cols):
                c = int(classes[r, k])
                if c < 0:
                    continue
                name = class_names[c] if class_names is not None and c < len(class_names) else c
                ax.text(
                    k * (cw + gap_x) + cw / 2,
                    r * (ch + gap_y) + ch + 1,
                    str(name)[:12],
                    ha="center",
                    va="top",
                    fontsize=5.5,
                    color="0.25",
                )
    ax.set_xlabel(f"the {cols} images with the strongest response, strongest first", fontsize=8)
    chars = max(50, int(width * inch * 14))  # about 14 characters of 8-point text per inch
    lines = [title, *textwrap.wrap(note, chars)] if note else [title]
    ax.set_title("\n".join(lines), fontsize=8.5)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------------

_BOOKKEEPING = frozenset({"step", "epoch", "time", "wall_time", "timestamp", "elapsed"})
_GROUP_YLABEL = {
    "loss": "loss",
    "accuracy": "accuracy",
    "gate": "gate value ν",
    "terms": "term value",
    "nmi": "NMI",
    "lr": "learning rate",
}
_ACCURACY = re.compile(r"(^|_)(top\d+|acc|accuracy)($|_)")


def _group_of(key: str) -> str:
    """Subplot group of a metric key.

    ``split/group/name`` (3+ parts, e.g. ``train/terms/hebb``) -> ``group``; otherwise the last part
    decides: ``*loss*`` -> ``loss``; ``*_norm`` (gradient, parameter and update norms) ->
    ``norms``; ``top1``, ``knn_top1``, ``acc``, ``accuracy`` ... -> ``accuracy``; anything else
    (``gate``, ``nmi``, ``lr`` ...) is its own group.
    """
    parts = key.split("/")
    if len(parts) >= 3:
        return parts[1]
    name = parts[-1]
    if "loss" in name:
        return "loss"
    if name.endswith("_norm"):
        return "norms"
    if _ACCURACY.search(name):
        return "accuracy"
    return name


def _as_scalar(value: object) -> float | None:
    """``value`` as a float if it is a real scalar (Python/numpy/jax, not bool), else ``None``."""
    if isinstance(value, bool | str | bytes) or value is None:
        return None
    try:
        arr = np.asarray(value)
    except Exception:  # anything that is not array-like is simply not plotted
        return None
    if arr.ndim != 0 or arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        return None
    if np.iscomplexobj(arr):
        return None
    return float(arr)


def _load_records(records: Iterable[Record] | PathLike) -> list[Record]:
    """Records as a list; a str/path is read as JSON lines (blank and non-object lines skipped).

    A damaged line (cut short by a full disk, or garbage) is skipped, with one warning naming the
    file and the lines.
    """
    if isinstance(records, str | os.PathLike):
        out, damaged = [], []
        with open(records, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    damaged.append(number)
                    continue
                if isinstance(row, dict):
                    out.append(row)
        if damaged:
            shown = ", ".join(map(str, damaged[:5])) + (" ..." if len(damaged) > 5 else "")
            warn(
                f"{os.fspath(records)} has {len(damaged)} damaged line(s) (line {shown}): the "
                "training curves leave them out"
            )
        return out
    return list(records)


# Panels of the known metric names (the part after ``train/`` / ``val/``), in drawing order:
# panel id -> (title, y label, y scale: 'auto' = log when positive and spanning > 1.5 decades).
_PANELS: dict[str, tuple[str, str, str]] = {
    "loss": ("Loss", "loss", "auto"),
    "accuracy": ("Accuracy", "Top-1", "linear"),
    "terms_raw": ("Loss terms, raw", "term value (log)", "log"),
    "terms_weighted": ("Loss terms as they enter the loss (× λ, × ν)", "term value (log)", "log"),
    "gate": ("Gate ν", "ν", "linear"),
    "hypergrad": ("Hypergradient h = −η⟨g_CE,t+1, g_R,t⟩, mean per φ update", "h", "linear"),
    "hypergrad_scaled": ("Normalised h̃ = h / RMS(h), mean per φ update", "h̃", "linear"),
    "lr": ("Learning rate", "η", "linear"),
    "grad_norm": ("Gradient norm (backbone)", "‖g‖₂", "auto"),
}
# Throughput and bookkeeping: not drawn unless asked for through ``keys``.
_HIDDEN = frozenset({"steps_per_s", "hyper_applied", "gate_input"})
_TERM_LABELS = {
    "ce": "CE",
    "hebb": "R_Hebb",
    "ewc": "R_EWC",
    "pair": "pairwise",
    "gate_prior": "KL gate prior",
    "center": "center",
    "supcon": "SupCon",
}
_TERM_ORDER = tuple(_TERM_LABELS)


def _panel_of(key: str) -> str | None:
    """The panel of a metric key (``None`` = not drawn by default); unknown keys by group."""
    name = key.split("/", 1)[1] if "/" in key else key
    if name == "loss":
        return "loss"
    if name.startswith("terms/"):
        return "terms_weighted" if name.endswith("_weighted") else "terms_raw"
    if name == "gate" or name.startswith("nm/gate_at_ce="):
        return "gate"
    if name in _PANELS:
        return name
    if name in _HIDDEN:
        return None
    return _group_of(key)


def _label(key: str, panel: str) -> str:
    """Legend label: term names spelt out, ``train/``/``val/`` kept where both occur."""
    name = key.split("/", 1)[1] if "/" in key else key
    split = key.split("/", 1)[0] if "/" in key else ""
    if panel.startswith("terms_"):
        term = name[len("terms/") :].removesuffix("_weighted")
        return _TERM_LABELS.get(term, term)
    if name.startswith("nm/gate_at_ce="):
        return f"ν(L_CE = {name.split('=', 1)[1]})"
    if panel == "gate":
        return "ν of the batch"
    return f"{split} {name}".strip() if split else name


def _term_colour(key: str) -> str:
    """One colour per loss term, the same in the raw and the weighted panel."""
    term = key.split("terms/", 1)[1].removesuffix("_weighted")
    index = (
        _TERM_ORDER.index(term)
        if term in _TERM_ORDER
        else len(_TERM_ORDER) + sum(map(ord, term)) % 3
    )
    return f"C{index % 10}"


def _per_update(series: dict[str, tuple[list[float], list[float]]], rows: list[Record]) -> None:
    """Hypergradient means per φ update instead of per step, in place.

    The trainer logs each key's mean over the steps of a log window, and h is 0 on the steps that
    do not update φ; dividing by the window's ``hyper_applied`` (the fraction of steps that did)
    gives the mean h of the updates. Windows without an update are dropped.
    """
    for key in [k for k in series if k.rsplit("/", 1)[-1] in ("hypergrad", "hypergrad_scaled")]:
        applied_key = key.rsplit("/", 1)[0] + "/hyper_applied" if "/" in key else "hyper_applied"
        applied = {}
        for row in rows:
            a = _as_scalar(row.get(applied_key))
            if a is not None:
                applied[_as_scalar(row["step"])] = a
        if not applied:
            continue
        xs, ys = series[key]
        kept = [(x, y / applied[x]) for x, y in zip(xs, ys, strict=True) if applied.get(x, 0) > 0]
        series[key] = ([x for x, _ in kept], [y for _, y in kept])


def plot_training_curves(
    records: Iterable[Record] | PathLike,
    path: PathLike,
    *,
    keys: Sequence[str] | None = None,
    title: str = "Training curves",
    phase_starts: Sequence[int] = (),
) -> Path:
    """Metric curves against the training step, one panel per kind of metric.

    The trainer's keys (``train/<name>``, ``val/<name>``) go to fixed panels, in this order:
    loss (train and validation), accuracy (``top1``, ``knn_top1``, ...), the loss terms raw
    (``train/terms/<t>``) and as they enter the loss (``train/terms/<t>_weighted``), both on a
    log axis with one colour per term, the gate ν (of each batch, and the learned function at
    the logged reference losses ``nm/gate_at_ce=<L>``), the hypergradient h and its normalised
    form (averaged over the φ updates of each log window, see :func:`_per_update`), the learning
    rate and the gradient norm. Other keys get a panel per group (see
    :func:`_group_of`), after those; throughput and bookkeeping (``steps_per_s``,
    ``hyper_applied``, ``gate_input``, and ``nonfinite_steps`` while it is 0) are left out unless
    named in ``keys``. On a log axis values ≤ 0 (a term that is off) are not drawn. A key may be
    missing from any record (e.g. ``val/top1`` logged once per evaluation): each curve uses the
    records that hold it, sorted by step; series of at most 50 points get markers. Each
    ``phase_starts`` step is a dashed vertical line on every panel.

    Args:
        records: a sequence of dicts each with a ``'step'`` key and scalar metric values (Python,
            numpy or jax scalars), or the path of a JSON-lines file with one such dict per line.
            Records without ``'step'`` and non-scalar values are ignored.
        path: output PNG path.
        keys: metric keys to draw (in this order within each panel); ``None`` draws every scalar
            key but ``step``, bookkeeping (``epoch``, ``time``, ``wall_time``, ``timestamp``,
            ``elapsed``) and the throughput keys above.
        title: figure title.
        phase_starts: steps at which a phase begins (e.g. ``[240]`` for phase 2), marked.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: if no requested key has a value in any record.
    """
    rows = [r for r in _load_records(records) if _as_scalar(r.get("step")) is not None]
    series: dict[str, tuple[list[float], list[float]]] = {}
    wanted = None if keys is None else list(keys)
    for row in rows:
        step = _as_scalar(row["step"])
        for key, value in row.items():
            if wanted is None and key in _BOOKKEEPING:
                continue
            if wanted is not None and key not in wanted:
                continue
            v = _as_scalar(value)
            if v is not None:
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step)
                ys.append(v)
    if not series:
        raise ValueError("plot_training_curves: no scalar metric values found in the records.")
    _per_update(series, rows)
    order = wanted if wanted is not None else sorted(series)
    panels: dict[str, list[str]] = {}
    for key in order:
        if key not in series:
            continue
        panel = _panel_of(key)
        if wanted is None and panel is None:
            continue
        if wanted is None and key.endswith("nonfinite_steps") and not any(series[key][1]):
            continue
        panels.setdefault(panel or _group_of(key), []).append(key)
    known = list(_PANELS)
    names = sorted(panels, key=lambda g: (known.index(g) if g in known else len(known), g))
    for group in ("terms_raw", "terms_weighted"):  # terms in a fixed order, CE first
        if group in panels:
            panels[group].sort(
                key=lambda k: (
                    _TERM_ORDER.index(t)
                    if (t := k.split("terms/", 1)[1].removesuffix("_weighted")) in _TERM_ORDER
                    else 99,
                    k,
                )
            )

    steps = np.concatenate([np.asarray(series[k][0]) for g in names for k in panels[g]])
    pad = max(1.0, 0.02 * float(steps.max() - steps.min()))
    x_range = (float(steps.min()) - pad, float(steps.max()) + pad)  # one step axis for all
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.3 * nrows + 0.4), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    for i, group in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        title_text, ylabel, scale = _PANELS.get(
            group, (group, _GROUP_YLABEL.get(group, group), "auto")
        )
        finite = np.concatenate(
            [np.asarray(series[k][1])[np.isfinite(series[k][1])] for k in panels[group]]
        )
        positive = finite.size > 0 and finite.min() > 0
        log = scale == "log" or (
            scale == "auto" and positive and finite.max() / finite.min() > 10**1.5
        )
        hidden = False
        factor = 1.0  # tiny values (the hypergradient, ~1e-5) are drawn in units of 10^e
        peak = float(np.max(np.abs(finite))) if finite.size else 0.0
        if not log and group.startswith("hypergrad") and 0 < peak and not 1e-2 <= peak < 1e3:
            factor = 10.0 ** math.floor(math.log10(peak))
            ylabel = f"{ylabel} (× {factor:.0e})".replace("e-0", "e-").replace("e+0", "e")
        for key in panels[group]:
            xs, ys = (np.asarray(v, dtype=np.float64) for v in series[key])
            ys = ys / factor
            idx = np.argsort(xs, kind="stable")
            xs, ys = xs[idx], ys[idx]
            if log:
                keep = ys > 0
                hidden |= bool((~keep).any())
                xs, ys = xs[keep], ys[keep]
                if not xs.size:
                    continue
            style = {"marker": "o" if xs.size <= 50 else None, "markersize": 3, "linewidth": 1.3}
            if group.startswith("terms_"):
                style["color"] = _term_colour(key)
            if key.split("/", 1)[-1].startswith("nm/gate_at_ce="):
                style.update(linestyle="--", marker=None, linewidth=1.1)
            if key.startswith("val/"):
                style["linewidth"] = 1.8
            ax.plot(xs, ys, label=_label(key, group), **style)
        if log:
            ax.set_yscale("log")
        elif group.startswith("hypergrad"):
            ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_xlim(*x_range)
        for start in phase_starts:
            ax.axvline(start, color="0.35", linestyle=":", linewidth=1.0)
        if phase_starts and i == 0:
            for start in phase_starts:
                ax.annotate(
                    " phase 2" if len(phase_starts) == 1 else f" step {start}",
                    (start, 1.0),
                    xycoords=("data", "axes fraction"),
                    va="top",
                    fontsize=8,
                    color="0.35",
                )
        ax.set_title(title_text, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3, which="major")
        if hidden:
            ax.text(
                0.99,
                0.01,
                "values ≤ 0 not drawn",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
                color="0.4",
            )
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)
