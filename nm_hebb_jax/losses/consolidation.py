"""Elastic-weight consolidation of NM-Hebb: the EWC penalty and the Fisher's normalisation.

docs/method.md (Phase 1, "Consolidation")::

    R_EWC = mean_i F̃_i (θ_i − θ*_i)²,    F̃ = F / mean(F)

where the means run over every scalar parameter of the tree and ``F`` is the empirical diagonal
Fisher. Pure functions of arrays; the Fisher itself (per-example gradients of a model), the EWC
state and its refresh are in :mod:`nm_hebb_jax.train.ewc`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nm_hebb_jax.losses._utils import check_same_structure, compute_dtype

Array = jax.Array
PyTree = Any


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
