"""The Hebbian regulariser R_Hebb of NM-Hebb (Miličević & Grbić, arXiv 2508.19896, Phase 1).

For one conv layer with ``C`` output channels::

    R_Hebb = (1/C) Σ_f (ā_f − w̄_f)²
    ā_f = mean of the activation map of channel f over the batch and spatial positions
    w̄_f = mean of filter f's kernel weights over kh · kw · C_in

It is a batch-level term, so it returns a scalar (no ``where=``; slice padded rows off first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nm_hebb_jax.losses._utils import compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

STOP_GRADIENT_MODES = ("none", "activations", "weights")


def hebbian_regularizer(
    activation: ArrayLike, kernel: ArrayLike, *, stop_gradient: str = "none"
) -> Array:
    """R_Hebb = (1/C) Σ_f (ā_f − w̄_f)² for one conv layer (NM-Hebb Phase 1).

    Means are accumulated in float32 (float64 under x64) even for bfloat16 inputs. The layer is
    addressed in Flax layouts; any rank works as long as channels are last (e.g. a Dense layer's
    ``[N, C]`` output with its ``[D, C]`` kernel).

    Args:
      activation: the layer's activation map, shape ``[N, H, W, C]``; ``ā`` averages every axis
        but the last.
      kernel: the layer's kernel in Flax HWIO layout, shape ``[kh, kw, C_in, C]`` (``C_in = 1`` for
        a depthwise conv); ``w̄`` averages every axis but the last.
      stop_gradient: which side is detached: ``'none'`` (gradient into both), ``'activations'``
        (only the kernel is pulled) or ``'weights'`` (only the activations are pulled).

    Returns:
      Scalar float32 ``R_Hebb``.

    Raises:
      ValueError: on an unknown ``stop_gradient`` or if the channel axes differ.

    Example:
      >>> import jax.numpy as jnp
      >>> activation = jnp.ones((2, 4, 4, 2)) * jnp.array([1.0, 3.0])  # ā = [1, 3]
      >>> kernel = jnp.zeros((3, 3, 5, 2))                              # w̄ = [0, 0]
      >>> print(hebbian_regularizer(activation, kernel))                # (1 + 9) / 2
      5.0

    References:
      Miličević & Grbić, "NM-Hebb: Coupling Local Hebbian Plasticity with Metric Learning for More
      Accurate and Interpretable CNNs", arXiv:2508.19896, 2025.
    """
    if stop_gradient not in STOP_GRADIENT_MODES:
        raise ValueError(
            f"hebbian_regularizer: stop_gradient must be one of {STOP_GRADIENT_MODES}, "
            f"got {stop_gradient!r}"
        )
    activation = jnp.asarray(activation)
    kernel = jnp.asarray(kernel)
    if activation.ndim < 1 or kernel.ndim < 1 or activation.shape[-1] != kernel.shape[-1]:
        raise ValueError(
            f"hebbian_regularizer: activation shape {activation.shape} and kernel shape "
            f"{kernel.shape} must share their last (output-channel) dimension"
        )
    if stop_gradient == "activations":
        activation = jax.lax.stop_gradient(activation)
    elif stop_gradient == "weights":
        kernel = jax.lax.stop_gradient(kernel)
    dtype = compute_dtype(activation, kernel)
    a_bar = jnp.mean(activation, axis=tuple(range(activation.ndim - 1)), dtype=dtype)
    w_bar = jnp.mean(kernel, axis=tuple(range(kernel.ndim - 1)), dtype=dtype)
    return jnp.mean(jnp.square(a_bar - w_bar))
