"""Filter-level analyses: filter redundancy and class selectivity of a conv layer.

docs/method.md, section "Metrics", "Filter-level":

* redundancy = mean |cosine similarity| between the filter pairs of a layer;
* class selectivity index per channel (Morcos et al. 2018) = (μ_max − μ_rest) / (μ_max + μ_rest)
  over the class-mean activations of the channel.

Reference: A. S. Morcos, D. G. T. Barrett, N. C. Rabinowitz, M. Botvinick, "On the importance of
single directions for generalization", ICLR 2018 (arXiv 1803.06959), section 2.3.

Everything runs on the host in numpy (float64); inputs may be jax arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
"""Anything ``np.asarray`` accepts: numpy arrays, jax arrays, nested lists."""

EPS = 1e-8
"""Default epsilon: filter-norm floor, selectivity denominator term and dead-channel level."""


def filter_redundancy(kernel: ArrayLike, *, eps: float = EPS) -> float:
    """Mean absolute cosine similarity over all distinct pairs of filters of one layer.

    Each output filter ``f`` is flattened over ``kh * kw * C_in`` to a vector ``w_f`` and

        redundancy = 2 / (C_out (C_out - 1)) * sum_{f < g} |<w_f, w_g>| / (|w_f| |w_g|).

    The absolute value makes a filter and its negation count as redundant (with a ReLU after
    BatchNorm they detect the same feature up to sign). 1.0 means all filters are parallel, 0.0
    means all are mutually orthogonal. Norms are floored at ``eps``, so an all-zero filter has
    similarity 0 with every other filter.

    Args:
        kernel: ``[kh, kw, C_in, C_out]`` Flax ``Conv`` kernel (any array whose last axis indexes
            the output filters works, e.g. a ``[C_in, C_out]`` Dense kernel).
        eps: floor of the filter norms.

    Returns:
        Redundancy in ``[0, 1]`` as a Python float; 0.0 when ``C_out == 1`` (no pairs).

    Raises:
        ValueError: if ``kernel`` has fewer than 2 dimensions.

    Example:
        >>> k = np.zeros((1, 1, 2, 3)); k[0, 0, :, 0] = [1, 0]; k[0, 0, :, 1] = [0, 1]
        >>> k[0, 0, :, 2] = [1, 1]
        >>> round(filter_redundancy(k), 6)  # pairs: 0, 1/sqrt(2), 1/sqrt(2)
        0.471405
    """
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim < 2:
        raise ValueError(f"kernel must have >= 2 dims (last = output filters), got {w.shape}.")
    c_out = w.shape[-1]
    if c_out < 2:
        return 0.0
    w = w.reshape(-1, c_out).T  # [C_out, kh*kw*C_in]
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), eps)
    cos = np.abs(w @ w.T)
    upper = np.triu_indices(c_out, k=1)
    return float(cos[upper].mean())


def class_selectivity(class_means: ArrayLike, *, eps: float = EPS) -> np.ndarray:
    """Class selectivity index of every channel (Morcos et al. 2018).

    For channel ``c`` with class-conditional mean activations ``μ_1c ... μ_Kc``:

        μ_max  = max_k μ_kc
        μ_rest = mean of the other K - 1 class means (the arg-max class removed once)
        SI_c   = (μ_max - μ_rest) / (μ_max + μ_rest + eps)

    With non-negative (post-ReLU) activations ``SI`` lies in ``[0, 1]``: 0 when every class drives
    the channel equally, 1 when only one class activates it. A channel that is dead for every class
    (``μ_max <= eps``) gets 0. Rows that are entirely NaN (classes without examples, see
    :func:`class_means`) are left out, so the index is taken over the classes that were observed.

    Args:
        class_means: ``[num_classes, C]`` class-conditional mean activations of one layer, e.g. from
            :func:`class_means` or :class:`ClassMeanAccumulator`. Must be non-negative.
        eps: added to the denominator; also the level at or below which a channel counts as dead.

    Returns:
        ``[C]`` float64 array of selectivity indices.

    Raises:
        ValueError: if the input is not 2-D, fewer than two classes were observed, a value is
            negative (the index assumes post-ReLU activations), or a row is partly NaN.

    Example:
        >>> np.round(class_selectivity([[1.0, 2.0, 0.0], [0.0, 2.0, 0.0]]), 6)  # eps: 1 - 1e-8
        array([1., 0., 0.])
    """
    mu = np.asarray(class_means, dtype=np.float64)
    if mu.ndim != 2:
        raise ValueError(f"class_means must be [num_classes, C], got shape {mu.shape}.")
    nan = np.isnan(mu)
    empty_rows = nan.all(axis=1)
    if (nan.any(axis=1) & ~empty_rows).any():
        raise ValueError("class_means: a class row is partly NaN; only whole NaN rows are allowed.")
    mu = mu[~empty_rows]
    num_classes = mu.shape[0]
    if num_classes < 2:
        raise ValueError(f"class selectivity needs >= 2 observed classes, got {num_classes}.")
    if (mu < 0).any():
        raise ValueError(
            "class_selectivity assumes non-negative (post-ReLU) activations; got a negative class "
            f"mean ({mu.min():.3g})."
        )
    mu_max = mu.max(axis=0)
    mu_rest = (mu.sum(axis=0) - mu_max) / (num_classes - 1)
    si = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    return np.where(mu_max <= eps, 0.0, si)


class ClassMeanAccumulator:
    """Running class-conditional mean activation per channel, accumulated over batches.

    Holds a ``[num_classes, C]`` float64 sum and a ``[num_classes]`` count; ``update`` adds a batch,
    ``result`` divides. 4-D activations are averaged over the spatial axes first, so a class mean is
    the mean over its examples of each example's spatially averaged channel activation (the same as
    the mean over all of the class's positions, since every example has the same H x W).

    Example:
        >>> acc = ClassMeanAccumulator(num_classes=2)
        >>> acc.update(np.array([[1.0], [3.0]]), np.array([0, 1]))
        >>> acc.update(np.array([[5.0], [9.0]]), np.array([0, 0]), mask=np.array([True, False]))
        >>> acc.result()
        array([[3.],
               [3.]])
    """

    def __init__(self, num_classes: int):
        """Creates an empty accumulator.

        Args:
            num_classes: number of classes; labels must lie in ``[0, num_classes)``.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self._sums: np.ndarray | None = None  # [num_classes, C] float64
        self._counts = np.zeros(self.num_classes, dtype=np.int64)

    @property
    def counts(self) -> np.ndarray:
        """``[num_classes]`` int64 number of (unmasked) examples seen per class."""
        return self._counts.copy()

    def update(
        self, activations: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None
    ) -> None:
        """Adds one batch.

        Args:
            activations: ``[N, C]`` or ``[N, H, W, C]`` (NHWC, Flax layout) activations of one
                layer.
            labels: ``[N]`` integer class ids in ``[0, num_classes)`` (masked rows may hold any
                integer).
            mask: optional ``[N]`` boolean (or 0/1) array; ``False`` rows (padding) are ignored.

        Raises:
            ValueError: on a wrong rank, inconsistent batch sizes, a channel count that differs from
                earlier batches, or an unmasked label outside ``[0, num_classes)``.
        """
        a = np.asarray(activations, dtype=np.float64)
        if a.ndim == 4:
            a = a.mean(axis=(1, 2))
        elif a.ndim != 2:
            raise ValueError(f"activations must be [N, C] or [N, H, W, C], got shape {a.shape}.")
        n, c = a.shape
        y = np.asarray(labels)
        if y.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {y.shape}.")
        valid = np.ones(n, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
        if valid.shape != (n,):
            raise ValueError(f"mask must have shape ({n},), got {valid.shape}.")
        if self._sums is None:
            self._sums = np.zeros((self.num_classes, c), dtype=np.float64)
        elif self._sums.shape[1] != c:
            raise ValueError(f"channel count changed from {self._sums.shape[1]} to {c}.")
        y = y[valid].astype(np.int64)
        a = a[valid]
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}).")
        np.add.at(self._sums, y, a)
        self._counts += np.bincount(y, minlength=self.num_classes)

    def result(self) -> np.ndarray:
        """Class means so far.

        Returns:
            ``[num_classes, C]`` float64 array; the row of a class with no examples is NaN
            (:func:`class_selectivity` skips such rows).

        Raises:
            ValueError: if ``update`` was never called.
        """
        if self._sums is None:
            raise ValueError("ClassMeanAccumulator.result() called before any update().")
        counts = self._counts[:, None].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, self._sums / counts, np.nan)


def class_means(activations: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Class-conditional mean activation of every channel, in one shot.

    Equivalent to one :meth:`ClassMeanAccumulator.update` followed by
    :meth:`ClassMeanAccumulator.result`; use the accumulator to stream over batches.

    Args:
        activations: ``[N, C]`` or ``[N, H, W, C]`` activations (4-D ones are averaged over H, W
            first).
        labels: ``[N]`` integer class ids in ``[0, num_classes)``.
        num_classes: number of classes.

    Returns:
        ``[num_classes, C]`` float64 class means; NaN rows for classes without examples.

    Example:
        >>> class_means(np.array([[1.0, 0.0], [3.0, 2.0], [4.0, 4.0]]), np.array([0, 0, 1]), 2)
        array([[2., 1.],
               [4., 4.]])
    """
    acc = ClassMeanAccumulator(num_classes)
    acc.update(activations, labels)
    return acc.result()


def filter_metrics(
    kernel: ArrayLike, class_means: ArrayLike, *, eps: float = EPS
) -> dict[str, float]:
    """Summary of the filter-level analyses of one conv layer.

    Args:
        kernel: ``[kh, kw, C_in, C_out]`` kernel of the layer.
        class_means: ``[num_classes, C_out]`` class-mean post-ReLU activations of the same layer's
            channels (:func:`class_means` / :class:`ClassMeanAccumulator`).
        eps: see :func:`filter_redundancy` and :func:`class_selectivity`.

    Returns:
        A dict of Python floats:

        * ``filter_redundancy``: :func:`filter_redundancy` of ``kernel``;
        * ``class_selectivity_mean`` / ``class_selectivity_median``: mean / median of
          :func:`class_selectivity` over the **live** channels, so that dead channels (whose index
          is 0/0, set to 0 per channel) do not dilute the summary; NaN if every channel is dead;
        * ``dead_channel_fraction``: fraction of channels whose class means are all ``<= eps``, i.e.
          (post-ReLU) never active on the evaluated data.

    Raises:
        ValueError: if the channel counts of ``kernel`` and ``class_means`` differ, or as
            :func:`class_selectivity`.
    """
    mu = np.asarray(class_means, dtype=np.float64)
    c_out = np.shape(kernel)[-1]
    if mu.ndim != 2 or mu.shape[1] != c_out:
        raise ValueError(f"class_means must be [num_classes, {c_out}], got shape {mu.shape}.")
    si = class_selectivity(mu, eps=eps)
    live = np.nanmax(mu, axis=0) > eps
    live_si = si[live]
    return {
        "filter_redundancy": filter_redundancy(kernel, eps=eps),
        "class_selectivity_mean": float(live_si.mean()) if live_si.size else float("nan"),
        "class_selectivity_median": float(np.median(live_si)) if live_si.size else float("nan"),
        "dead_channel_fraction": float(1.0 - live.mean()),
    }
