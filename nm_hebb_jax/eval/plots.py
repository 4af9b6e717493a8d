"""Pictures of a trained model: t-SNE embedding map, filter grid, training curves.

METHOD.md, section "Metrics", "Pictures". Every function renders one figure with matplotlib's Agg
(raster, headless) backend, writes it as a PNG (parent folders are created) and returns the path.

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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

ArrayLike = npt.ArrayLike
"""Anything ``np.asarray`` accepts: numpy arrays, jax arrays, nested lists."""
PathLike = str | os.PathLike
Record = Mapping[str, object]
"""One logged row: ``{'step': int, 'train/loss': float, ...}``."""

_DPI = 120


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


def plot_filter_grid(
    kernel: ArrayLike,
    path: PathLike,
    *,
    max_filters: int = 64,
    title: str = "First-layer filters",
) -> Path:
    """The first ``max_filters`` filters of a conv layer as small images in a near-square grid.

    With ``C_in == 3`` each filter is shown as an RGB image, min-max normalised per filter (over its
    three channels together) to ``[0, 1]``; otherwise the filter is averaged over ``C_in`` and shown
    in grey, also min-max normalised per filter (black = its most negative, white = its most
    positive weight). The grid has ``ceil(sqrt(n))`` columns; filter ``i`` sits at row
    ``i // cols``, column ``i % cols``; small filters are enlarged by pixel repetition and a thin
    gap separates them (white for RGB, light blue for grey filters).

    Args:
        kernel: ``[kh, kw, C_in, C_out]`` Flax ``Conv`` kernel.
        path: output PNG path.
        max_filters: largest number of filters shown (the first ones by output index).
        title: figure title.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: if ``kernel`` is not 4-D or ``max_filters < 1``.
    """
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"kernel must be [kh, kw, C_in, C_out], got shape {w.shape}.")
    if max_filters < 1:
        raise ValueError(f"max_filters must be >= 1, got {max_filters}.")
    kh, kw, c_in, c_out = w.shape
    n = min(c_out, max_filters)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    rgb = c_in == 3
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
# Training curves
# --------------------------------------------------------------------------------------------------

_BOOKKEEPING = frozenset({"step", "epoch", "time", "wall_time", "timestamp", "elapsed"})
_GROUP_ORDER = ("loss", "accuracy", "gate", "terms")
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
    """Records as a list; a str/path is read as JSON lines (blank and non-object lines skipped)."""
    if isinstance(records, str | os.PathLike):
        out = []
        with open(records, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    row = json.loads(line)
                    if isinstance(row, dict):
                        out.append(row)
        return out
    return list(records)


def plot_training_curves(
    records: Iterable[Record] | PathLike,
    path: PathLike,
    *,
    keys: Sequence[str] | None = None,
    title: str = "Training curves",
) -> Path:
    """Metric curves against the training step, one subplot per metric group.

    Keys are grouped by name: ``split/group/name`` keys (three or more parts, e.g.
    ``train/terms/hebb``) go to ``group``; two-part keys by their last part: names containing
    ``loss`` -> "loss", Top-k / accuracy names (``top1``, ``knn_top1``, ``acc``) -> "accuracy",
    others (``gate``, ``nmi``, ``lr`` ...) each to their own group. Groups appear in the order loss,
    accuracy, gate, terms, then alphabetically. A key may be missing from any record (e.g.
    ``val/top1`` logged once per epoch): each curve uses the records that hold it, sorted by step;
    series with at most 50 points get markers. A group whose values are all positive and span more
    than three decades is drawn on a log y-axis (raw vs. weighted loss terms).

    Args:
        records: a sequence of dicts each with a ``'step'`` key and scalar metric values (Python,
            numpy or jax scalars), or the path of a JSON-lines file with one such dict per line.
            Records without ``'step'`` and non-scalar values are ignored.
        path: output PNG path.
        keys: metric keys to draw (in this order within each group); ``None`` draws every scalar key
            except ``step`` and bookkeeping keys (``epoch``, ``time``, ``wall_time``, ``timestamp``,
            ``elapsed``).
        title: figure title.

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
    order = wanted if wanted is not None else sorted(series)
    groups: dict[str, list[str]] = {}
    for key in order:
        if key in series:
            groups.setdefault(_group_of(key), []).append(key)
    names = sorted(groups, key=lambda g: (_GROUP_ORDER.index(g) if g in _GROUP_ORDER else 99, g))

    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _new_figure(5.0 * ncols, 3.6 * nrows + 0.5)
    for i, group in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = []
        for key in groups[group]:
            xs, ys = (np.asarray(v) for v in series[key])
            idx = np.argsort(xs, kind="stable")
            marker = "o" if xs.size <= 50 else None
            ax.plot(xs[idx], ys[idx], marker=marker, markersize=3, linewidth=1.2, label=key)
            values.append(ys[np.isfinite(ys)])
        finite = np.concatenate(values)
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 1e3:
            ax.set_yscale("log")
        ax.set_title(group)
        ax.set_xlabel("step")
        ax.set_ylabel(_GROUP_YLABEL.get(group, group))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
