"""Dense and grouped convolutions of the backbones, and :func:`conv`, the call every conv unit
makes (:class:`nm_hebb_jax.models.ConvBN`): it picks the depthwise kernels and the input barrier
through the backend switch of :mod:`nm_hebb_jax.ops.backend`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nm_hebb_jax.ops.backend import resolve_conv_input_barrier
from nm_hebb_jax.ops.depthwise import depthwise_conv, shifted_windows

Array = jax.Array


def conv(
    x: Array,
    kernel: Array,
    strides: int,
    groups: int = 1,
    *,
    depthwise_impl: str = "auto",
    input_barrier: str = "auto",
) -> Array:
    """A conv unit's convolution, NHWC/HWIO, symmetric padding ``(k - 1) // 2``.

    A depthwise kernel (``groups == C_in == C_out > 1``) goes to :func:`depthwise_conv` with
    ``depthwise_impl``; any other to :func:`conv2d`, its input through :func:`materialize` when
    ``input_barrier`` resolves to on (:mod:`nm_hebb_jax.ops.backend`).

    Args:
      x: ``[N, H, W, C_in]``.
      kernel: ``[k, k, C_in / groups, C_out]``.
      strides: spatial stride.
      groups: feature groups.
      depthwise_impl: one of :data:`~nm_hebb_jax.ops.backend.DEPTHWISE_IMPLS`.
      input_barrier: one of :data:`~nm_hebb_jax.ops.backend.CONV_INPUT_BARRIERS`.

    Returns:
      ``[N, Ho, Wo, C_out]``.
    """
    barrier = resolve_conv_input_barrier(input_barrier)
    if groups > 1 and groups == x.shape[-1] == kernel.shape[-1]:
        return depthwise_conv(x, kernel, strides, depthwise_impl)
    return conv2d(x, kernel, strides, groups, input_barrier=barrier)


def _rewrite_in_place(x: Array) -> Array:
    """``x`` with ``x[:, 0, ..., 0]`` written back in place: the same values.

    The slice spans the whole leading (batch) axis, so on a batch-sharded ``x`` every device
    updates its own shard and nothing is communicated.
    """
    start = (0,) * x.ndim
    column = jax.lax.dynamic_slice(x, start, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jax.lax.dynamic_update_slice(x, column, start)


@jax.custom_jvp
def materialize(x: Array) -> Array:
    """Identity that keeps ``x`` in memory as computed, so XLA reads it instead of recomputing it.

    For the kernel gradient of a convolution, XLA:CPU transposes the layer's input from NHWC to
    CHWN. When that input is BatchNorm + ReLU (+ residual) of a stored map, XLA fuses the
    elementwise chain into the transpose and recomputes it there, and the fused loop writes the
    transpose with strided stores instead of XLA's tiled transpose (BENCHMARKS.md, method notes:
    "the conv-input barrier"). Here ``x`` is rewritten in place by a ``dynamic_update_slice`` of a
    slice of its own. XLA does not fuse an in-place update into its consumers, so the transpose
    reads the stored ``x``.

    The values are unchanged (bit for bit) and the tangent passes through unchanged
    (``custom_jvp``), so the backward pass has no extra work (it transposes to the identity) and
    forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) still works; the compiled training step is
    the same as with a ``custom_vjp`` identity. On GPU and TPU the compilers choose layouts
    themselves, so :func:`conv` applies this on CPU only by default (``conv_input_barrier``).
    """
    return _rewrite_in_place(x)


@materialize.defjvp
def _materialize_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _rewrite_in_place(x), t


def conv2d(
    x: Array, kernel: Array, strides: int, groups: int = 1, input_barrier: bool = False
) -> Array:
    """``lax.conv_general_dilated`` in NHWC/HWIO with symmetric padding ``(k - 1) // 2``.

    ``input_barrier``: pass ``x`` through :func:`materialize` first (same values and gradients).
    A map smaller than the kernel (VGG-11's last 2x2 stage at 32x32 input) goes through
    :func:`conv2d_as_matmul` instead, on every backend: XLA swaps such a convolution's operands,
    and XLA:CPU then runs it far slower than the equivalent matrix product (BENCHMARKS.md, method
    notes: "maps smaller than the kernel").
    """
    pad = (kernel.shape[0] - 1) // 2
    if input_barrier:
        x = materialize(x)
    if groups == 1 and min(x.shape[1], x.shape[2]) < kernel.shape[0]:
        return conv2d_as_matmul(x, kernel, strides)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def conv2d_as_matmul(x: Array, kernel: Array, strides: int) -> Array:
    """:func:`conv2d` (``groups=1``, padding ``(k - 1) // 2``) as one matrix product.

    The k*k shifted, strided windows of the zero-padded input (:func:`shifted_windows`, the
    depthwise sum's) are concatenated along channels (``[N, Ho, Wo, k*k*C]``, tap-major like the
    HWIO kernel) and multiplied by the kernel reshaped to ``[k*k*C, C_out]``. The same sums as
    the convolution, in another order (float rounding). Meant for small maps, where the window
    copies cost little.
    """
    k, _, c, c_out = kernel.shape
    windows = shifted_windows(x, k, strides)
    n, ho, wo, _ = windows[0].shape
    patches = jnp.concatenate(windows, axis=-1).reshape(n * ho * wo, k * k * c)
    return (patches @ kernel.reshape(k * k * c, c_out)).reshape(n, ho, wo, c_out)
