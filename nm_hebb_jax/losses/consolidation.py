"""Elastic-weight consolidation of NM-Hebb: the EWC penalty and the empirical diagonal Fisher.

METHOD.md (Phase 1, "Consolidation")::

    R_EWC = mean_i F̃_i (θ_i − θ*_i)²,    F̃ = F / mean(F)

where the means run over every scalar parameter of the tree and ``F`` is the empirical diagonal
Fisher: the mean over examples of the squared *per-example* gradient (not the square of a batch-mean
gradient, which vanishes near convergence).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nm_hebb_jax.losses._utils import check_same_structure, compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PyTree = Any
ExampleLossFn = Callable[..., Array]  # (params, example, *extra_args) -> scalar


def _sum_and_count(tree: PyTree, dtype: np.dtype) -> tuple[Array, int]:
    leaves = jax.tree.leaves(tree)
    total = jnp.zeros((), dtype)
    for leaf in leaves:
        total = total + jnp.sum(jnp.asarray(leaf), dtype=dtype)
    return total, sum(math.prod(jnp.shape(leaf)) for leaf in leaves)


def normalize_fisher(fisher: PyTree) -> PyTree:
    """``F̃ = F / mean(F)``, the mean taken over every scalar of the tree; all zeros if mean(F) ≤ 0.

    Args:
      fisher: pytree of non-negative arrays (a diagonal Fisher).

    Returns:
      Pytree of the same structure, float32 (float64 for float64 input), with ``mean(F̃) = 1``.

    Example:
      >>> import jax.numpy as jnp
      >>> f = normalize_fisher({"a": jnp.array([1.0, 3.0]), "b": jnp.array([0.0, 0.0])})
      >>> print(f["a"], f["b"])
      [1. 3.] [0. 0.]

    References:
      Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017.
    """
    leaves = jax.tree.leaves(fisher)
    if not leaves:
        return fisher
    dtype = compute_dtype(*leaves)
    total, count = _sum_and_count(fisher, dtype)
    mean = total / count
    positive = mean > 0
    safe_mean = jnp.where(positive, mean, 1.0)
    return jax.tree.map(
        lambda f: jnp.where(positive, jnp.asarray(f).astype(dtype) / safe_mean, 0.0), fisher
    )


def ewc_penalty(params: PyTree, anchor: PyTree, fisher: PyTree, *, normalize: bool = True) -> Array:
    """EWC penalty ``mean_i F̃_i (θ_i − θ*_i)²`` over all scalar parameters of a pytree.

    With ``normalize=True``, ``F̃ = F / mean(F)`` so the penalty is a Fisher-weighted mean squared
    drift, i.e. ``Σ_i F_i (θ_i − θ*_i)² / Σ_i F_i``; if ``mean(F) ≤ 0`` (e.g. the all-zero Fisher
    used before the first refresh) the penalty and its gradients are exactly 0 (no NaN). With
    ``normalize=False`` the given ``fisher`` is used as is (e.g. an already normalised F̃). At the
    anchor the value and its gradient are exactly 0.

    Args:
      params: current parameters θ, a pytree of float arrays.
      anchor: anchor parameters θ*, same structure and leaf shapes.
      fisher: diagonal Fisher F (non-negative), same structure and leaf shapes.
      normalize: divide the Fisher by its mean over all scalar parameters.

    Returns:
      Scalar float32 penalty (float64 for float64 inputs).

    Raises:
      ValueError: if the three pytrees differ in structure or leaf shapes.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> anchor = {"w": jnp.array([0.0, 0.0])}
      >>> fisher = {"w": jnp.array([1.0, 3.0])}
      >>> print(ewc_penalty(params, anchor, fisher))  # (1·1 + 3·4) / (1 + 3)
      3.25
      >>> print(ewc_penalty(params, anchor, fisher, normalize=False))  # (1·1 + 3·4) / 2
      6.5

    References:
      Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017;
      Schwarz et al., "Progress & Compress" (online EWC), ICML 2018; Miličević & Grbić,
      arXiv:2508.19896, 2025.
    """
    check_same_structure("ewc_penalty", params=params, anchor=anchor, fisher=fisher)
    p_leaves = jax.tree.leaves(params)
    a_leaves = jax.tree.leaves(anchor)
    f_leaves = jax.tree.leaves(fisher)
    if not p_leaves:
        return jnp.zeros((), jnp.float32)
    dtype = compute_dtype(*p_leaves, *a_leaves, *f_leaves)
    weighted = jnp.zeros((), dtype)
    for p, a, f in zip(p_leaves, a_leaves, f_leaves, strict=True):
        drift = jnp.asarray(p).astype(dtype) - jnp.asarray(a).astype(dtype)
        weighted = weighted + jnp.sum(jnp.asarray(f).astype(dtype) * jnp.square(drift))
    if not normalize:
        count = sum(math.prod(jnp.shape(p)) for p in p_leaves)
        return weighted / count
    total, _ = _sum_and_count(fisher, dtype)
    positive = total > 0
    return jnp.where(positive, weighted / jnp.where(positive, total, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _accumulate_squared_grads(
    params: PyTree,
    acc: PyTree,
    chunk: PyTree,
    mask: Array,
    extra_args: tuple,
    *,
    loss_fn: ExampleLossFn,
) -> PyTree:
    """``acc + Σ_n mask_n · (∂ loss_fn(params, chunk_n)/∂params)²`` for one chunk.

    One jitted call per chunk, driven by a host loop: on XLA:CPU a convolution inside a
    ``lax.scan``/``lax.cond`` body runs far slower than at the top level of a computation
    (measured 25x for a small ResNet), so the chunks are not scanned.
    """
    in_axes = (None, 0) + (None,) * len(extra_args)
    grads = jax.vmap(jax.grad(loss_fn), in_axes=in_axes)(params, chunk, *extra_args)

    def add(a: Array, g: Array) -> Array:
        m_b = mask.reshape((mask.shape[0],) + (1,) * (g.ndim - 1))
        return a + jnp.sum(jnp.where(m_b, jnp.square(g.astype(a.dtype)), 0.0), axis=0)

    return jax.tree.map(add, acc, grads)


def _batch_size(batch: PyTree) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("fisher_diagonal: a batch has no array leaves")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"fisher_diagonal: every leaf of a batch needs the same leading batch axis, "
            f"got leading sizes {sorted(str(s) for s in sizes)}"
        )
    return sizes.pop()


def _take_rows(x: ArrayLike, index: np.ndarray) -> ArrayLike:
    """Rows ``index`` of ``x``, on the host for NumPy inputs and on device otherwise."""
    return x[index] if isinstance(x, np.ndarray) else jnp.asarray(x)[index]


def fisher_diagonal(
    loss_fn: ExampleLossFn,
    params: PyTree,
    batches: Iterable[PyTree],
    *,
    chunk_size: int = 16,
    extra_args: tuple = (),
) -> PyTree:
    """Empirical diagonal Fisher: mean over all examples of the squared per-example gradient.

    ``F_i = (1/M) Σ_m (∂ℓ(θ, x_m)/∂θ_i)²`` over the ``M`` examples of all ``batches``. Per-example
    gradients come from ``jax.vmap(jax.grad(loss_fn))`` on chunks of ``chunk_size`` examples, one
    jitted call per chunk accumulating the sum of squares, so peak memory is about
    ``chunk_size × |θ|`` whatever the batch size. The per-chunk accumulation is jit-compiled once
    per ``(loss_fn, chunk_size, example shape)``: pass the *same* ``loss_fn`` object across
    calls to reuse it, and pass arrays that change between calls (e.g. BatchNorm statistics) through
    ``extra_args`` rather than capturing them in a new closure, which would recompile. Batches are
    padded (by repeating their first example) to a multiple of ``chunk_size`` and the padding is
    masked out, so a short last batch does not trigger a recompilation.

    Args:
      loss_fn: ``loss_fn(params, example, *extra_args) -> scalar`` for ONE example (no batch
        axis), e.g. the cross-entropy of a model applied with BatchNorm in inference mode.
      params: the parameters θ at which the Fisher is taken (pytree of float arrays).
      batches: iterable of pytrees whose leaves share a leading batch axis (e.g.
        ``{'image': [B, H, W, 3], 'label': [B]}``); batch sizes may differ.
      chunk_size: examples per vmapped chunk (memory/speed trade-off).
      extra_args: extra (non-differentiated, non-batched) pytree arguments of ``loss_fn``, e.g.
        ``(batch_stats,)``; traced, so new values do not trigger a recompilation.

    Returns:
      Pytree like ``params`` with the diagonal Fisher, float32 (float64 for float64 params).

    Raises:
      ValueError: if ``batches`` holds no example, or a batch's leaves disagree on the batch size.

    Example:
      >>> import jax.numpy as jnp
      >>> loss_fn = lambda p, ex: 0.5 * (p["w"] @ ex["x"] - ex["y"]) ** 2
      >>> params = {"w": jnp.array([1.0, 0.0])}
      >>> batch = {"x": jnp.array([[1.0, 2.0], [0.0, 1.0]]), "y": jnp.array([0.0, 1.0])}
      >>> # per-example grads (w·x − y) x: [1, 2] and [0, −1]  ->  F = ([1, 4] + [0, 1]) / 2
      >>> print(fisher_diagonal(loss_fn, params, [batch])["w"])
      [0.5 2.5]

    References:
      Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017;
      Kunstner et al., "Limitations of the empirical Fisher approximation for natural gradient
      descent", NeurIPS 2019 (empirical vs. true Fisher).
    """
    if not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"fisher_diagonal: chunk_size must be a positive int, got {chunk_size!r}")
    params = jax.tree.map(jnp.asarray, params)
    extra_args = tuple(extra_args)
    acc = jax.tree.map(lambda p: jnp.zeros(p.shape, compute_dtype(p)), params)
    chunk = int(chunk_size)
    count = 0
    for batch in batches:
        n = _batch_size(batch)
        if n == 0:
            continue
        padded_size = -(-n // chunk) * chunk
        if padded_size > n:
            index = np.concatenate([np.arange(n), np.zeros(padded_size - n, np.int64)])
            batch = jax.tree.map(lambda x, index=index: _take_rows(x, index), batch)
        valid = np.arange(padded_size) < n
        for start in range(0, padded_size, chunk):
            part = jax.tree.map(lambda x, s=start: x[s : s + chunk], batch)
            acc = _accumulate_squared_grads(
                params,
                acc,
                part,
                jnp.asarray(valid[start : start + chunk]),
                extra_args,
                loss_fn=loss_fn,
            )
        count += n
    if count == 0:
        raise ValueError("fisher_diagonal: `batches` yielded no examples")
    return jax.tree.map(lambda a: a / count, acc)
