"""Losses whose gradient is a Hebbian update (Miconi 2021, "Hebbian learning with gradients").

For a conv layer with filters ``w_j``, input patches ``x_{b,p}``, pre-activation
``u = w_j · x_{b,p}`` and a post-synaptic signal ``y`` computed without gradient, the surrogate
``ỹ = g(w) + stop_gradient(y − g(w))`` has the value of ``y`` and the gradient of ``g``, so
``L = −½ Σ ỹ²`` gives ``−∂L/∂w_j = Σ_{b,p} y · ∂g/∂w_j``:

=========  ==========================  ===============================
rule       g                           update Δw_j ∝ Σ_{b,p}
=========  ==========================  ===============================
``hebb``   u                           y · x
``instar`` u − ½‖w_j‖²                 y · (x − w_j)
``oja``    u − ½‖w_j‖² · y (y const.)  y · (x − y · w_j)
=========  ==========================  ===============================

``hebbian_rule_loss`` is the surrogate loss (train it with any optax optimiser);
``hebbian_update`` computes the same update directly from image patches (the hand-summed check).
Layouts are Flax's: inputs NHWC, kernels HWIO. Convolutions are unbiased and ungrouped.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from nm_hebb_jax.losses._utils import compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Stride = int | Sequence[int]
Padding = str | Sequence[tuple[int, int]]

RULES = ("hebb", "instar", "oja")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _strides(fn_name: str, stride: Stride) -> tuple[int, int]:
    if isinstance(stride, numbers.Integral):
        return (int(stride), int(stride))
    strides = tuple(int(s) for s in stride)
    if len(strides) != 2:
        raise ValueError(f"{fn_name}: stride must be an int or a pair of ints, got {stride}")
    return strides


def _check_inputs(
    fn_name: str, x: Array, kernel: Array, y: Array, rule: str, strides: tuple, padding: Padding
) -> None:
    """Validates the rule, then the ranks and channel counts, then ``y`` against the conv output."""
    if rule not in RULES:
        raise ValueError(f"{fn_name}: unknown rule {rule!r}; valid rules are {RULES}")
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"{fn_name}: expected x [N, H, W, C_in] and kernel [kh, kw, C_in, C_out], got shapes "
            f"{x.shape} and {kernel.shape}"
        )
    out_shape = jax.eval_shape(
        lambda a, k: jax.lax.conv_general_dilated(
            a, k, strides, padding, dimension_numbers=_DIMENSION_NUMBERS
        ),
        x,
        kernel,
    ).shape
    if y.shape != tuple(out_shape):
        raise ValueError(
            f"{fn_name}: y has shape {y.shape} but the conv output has shape {tuple(out_shape)}"
        )


def hebbian_rule_loss(
    x: ArrayLike,
    kernel: ArrayLike,
    y: ArrayLike,
    *,
    rule: str,
    stride: Stride = 1,
    padding: Padding = "VALID",
) -> Array:
    """Surrogate loss ``−½ Σ ỹ²`` whose negative kernel gradient is a Hebbian update (Miconi 2021).

    ``u = conv(x, kernel)``, ``g`` per ``rule`` (see the module table), ``ỹ = g + sg(y − g)``, and
    ``L = −½ Σ_{b,p,j} ỹ²``; hence ``−∂L/∂kernel = hebbian_update(x, kernel, y, rule=rule, ...)``.
    ``y`` is treated as a constant (no gradient flows into it); gradients do flow into ``x``
    (detach it yourself for layer-local learning). The value is ``−½ Σ y²``, which carries no
    information about learning progress: log the update norm instead.

    Args:
      x: pre-synaptic input, shape ``[N, H, W, C_in]``.
      kernel: filters in HWIO layout, shape ``[kh, kw, C_in, C_out]``.
      y: post-synaptic signal with the conv output's shape ``[N, H', W', C_out]``.
      rule: ``'hebb'``, ``'instar'`` or ``'oja'``.
      stride: conv stride, an int or a ``(sh, sw)`` pair.
      padding: ``'VALID'`` or ``'SAME'`` (or explicit ``[(lo, hi), (lo, hi)]`` pairs, as in lax).

    Returns:
      Scalar float32 loss (summed over batch, positions and channels; no batch mean).

    Raises:
      ValueError: on an unknown rule or inconsistent shapes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.ones((1, 2, 2, 1))
      >>> kernel = jnp.full((2, 2, 1, 1), 0.5)
      >>> y = jnp.full((1, 1, 1, 1), 2.0)
      >>> g = jax.grad(hebbian_rule_loss, argnums=1)(x, kernel, y, rule="instar")
      >>> print(-g[..., 0, 0])  # y · (x − w) = 2 · (1 − 0.5)
      [[1. 1.]
       [1. 1.]]

    References:
      Miconi, "Hebbian learning with gradients: Hebbian convolutional neural networks with modern
      deep learning frameworks", arXiv:2107.01729, 2021; Grossberg, "Adaptive pattern
      classification and universal recoding", Biol. Cybern. 1976 (instar); Oja, "Simplified neuron
      model as a principal component analyzer", J. Math. Biol. 1982.
    """
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    y = jnp.asarray(y)
    strides = _strides("hebbian_rule_loss", stride)
    _check_inputs("hebbian_rule_loss", x, kernel, y, rule, strides, padding)
    dtype = compute_dtype(x, kernel, y)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    y = jax.lax.stop_gradient(y.astype(dtype))
    u = jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS
    )
    if rule == "hebb":
        g = u
    else:
        half_sq_norm = 0.5 * jnp.sum(jnp.square(kernel), axis=(0, 1, 2))  # [C_out]
        g = u - half_sq_norm if rule == "instar" else u - half_sq_norm * y
    y_tilde = g + jax.lax.stop_gradient(y - g)
    return -0.5 * jnp.sum(jnp.square(y_tilde))


def hebbian_update(
    x: ArrayLike,
    kernel: ArrayLike,
    y: ArrayLike,
    *,
    rule: str,
    stride: Stride = 1,
    padding: Padding = "VALID",
) -> Array:
    """The Hebbian update ``Σ_{b,p} y · ∂g/∂w`` summed directly from image patches (Miconi 2021).

    ``hebb``: ``Σ y x``; ``instar``: ``Σ y (x − w_j)``; ``oja``: ``Σ y (x − y w_j)``, where the
    sums run over batch and output positions and ``x`` is the (zero-padded, strided) input patch
    feeding each output position. Equals ``−∂ hebbian_rule_loss / ∂kernel``; add it to the kernel
    (times a learning rate) to learn.

    Args:
      x: pre-synaptic input, shape ``[N, H, W, C_in]``.
      kernel: filters in HWIO layout, shape ``[kh, kw, C_in, C_out]``.
      y: post-synaptic signal, shape ``[N, H', W', C_out]`` (the conv output's shape).
      rule: ``'hebb'``, ``'instar'`` or ``'oja'``.
      stride: conv stride, an int or a ``(sh, sw)`` pair.
      padding: ``'VALID'`` or ``'SAME'`` (or explicit ``[(lo, hi), (lo, hi)]`` pairs, as in lax).

    Returns:
      The update, shape ``[kh, kw, C_in, C_out]``, float32.

    Raises:
      ValueError: on an unknown rule or inconsistent shapes.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((1, 2, 2, 1))
      >>> kernel = jnp.full((2, 2, 1, 1), 0.5)
      >>> y = jnp.full((1, 1, 1, 1), 2.0)
      >>> print(hebbian_update(x, kernel, y, rule="oja")[..., 0, 0])  # 2 · (1 − 2 · 0.5)
      [[0. 0.]
       [0. 0.]]

    References:
      Miconi, "Hebbian learning with gradients: Hebbian convolutional neural networks with modern
      deep learning frameworks", arXiv:2107.01729, 2021.
    """
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    y = jnp.asarray(y)
    strides = _strides("hebbian_update", stride)
    _check_inputs("hebbian_update", x, kernel, y, rule, strides, padding)
    kh, kw, c_in, c_out = kernel.shape
    dtype = compute_dtype(x, kernel, y)
    x, kernel, y = x.astype(dtype), kernel.astype(dtype), y.astype(dtype)
    patches = jax.lax.conv_general_dilated_patches(
        x, (kh, kw), strides, padding, dimension_numbers=_DIMENSION_NUMBERS
    )  # [N, H', W', C_in * kh * kw], features ordered (C_in, kh, kw)
    patches = patches.reshape(patches.shape[:3] + (c_in, kh, kw))
    update = jnp.einsum("nhwcij,nhwo->ijco", patches, y)  # Σ y x, HWIO
    if rule == "instar":
        update = update - jnp.sum(y, axis=(0, 1, 2)) * kernel
    elif rule == "oja":
        update = update - jnp.sum(jnp.square(y), axis=(0, 1, 2)) * kernel
    return update
