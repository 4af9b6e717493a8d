"""Whole-image ZCA whitening (as in Miconi 2021, "Hebbian learning with gradients").

Each image is flattened to a vector of ``D = H·W·C`` values and standardised on its own (zero mean,
unit standard deviation over its ``D`` values); the whitening matrix is estimated from ``N`` such
vectors ``t``: ``Σ = tᵀt / N + ε I``, ``Σ = E Λ Eᵀ``, ``Z = E Λ^{−1/2} Eᵀ`` (symmetric), and an
image is whitened as ``Z t``. ``ε`` (default 1e-3) is the ridge added to the eigenvalues.

Declared difference from the author's code: the author divides ``tᵀt`` by ``D`` instead of ``N``,
which scales Σ by ``N/D`` (≈2.9 for 9,000 CIFAR images) and so ε by ``D/N`` relative to ours;
the overall scale of the output does not matter downstream (each layer normalises its input).

Reference: Miconi, arXiv:2107.01729, 2021; Bell & Sejnowski, "The independent components of
natural scenes are edge filters", Vision Research 1997 (ZCA).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_EPS = 1e-10


def standardize_images(images: Array) -> Array:
    """Flattens ``[N, H, W, C]`` images (any numeric dtype) to ``[N, D]``, each row standardised."""
    t = jnp.asarray(images, jnp.float32).reshape(images.shape[0], -1)
    t = t - jnp.mean(t, axis=1, keepdims=True)
    return t / (jnp.std(t, axis=1, keepdims=True) + _EPS)


def fit_zca(images: np.ndarray | Array, *, eps: float = 1e-3) -> Array:
    """Estimates the whole-image ZCA matrix from a set of images.

    Args:
      images: ``[N, H, W, C]`` (uint8 or float); each image is standardised on its own first.
      eps: ridge added to the covariance eigenvalues (> 0).

    Returns:
      ``Z``, float32 ``[D, D]`` with ``D = H·W·C``, symmetric.

    Raises:
      ValueError: on ``eps <= 0`` or fewer than 2 images.
    """
    if not eps > 0:
        raise ValueError(f"zca_eps={eps} must be > 0")
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"fit_zca needs [N >= 2, H, W, C] images, got shape {images.shape}")
    t = np.asarray(standardize_images(images), np.float64)
    cov = t.T @ t / t.shape[0] + eps * np.eye(t.shape[1])
    evals, evecs = np.linalg.eigh(cov)
    zca = (evecs * (1.0 / np.sqrt(evals))) @ evecs.T
    return jnp.asarray(zca, jnp.float32)


def apply_zca(images: Array, zca: Array) -> Array:
    """Whitens images with a matrix from :func:`fit_zca`.

    Args:
      images: ``[B, H, W, C]`` (uint8 or float).
      zca: ``[D, D]``, ``D = H·W·C``.

    Returns:
      float32 ``[B, H, W, C]``: ``Z t`` for each standardised, flattened image ``t``.
    """
    if images.ndim != 4 or int(np.prod(images.shape[1:])) != zca.shape[0]:
        raise ValueError(
            f"images {tuple(images.shape)} do not match a ZCA matrix of size {zca.shape[0]}"
        )
    t = standardize_images(images)
    return (t @ zca).reshape(images.shape).astype(jnp.float32)  # Z symmetric: (Z tᵀ)ᵀ = t Z
