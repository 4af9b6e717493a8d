"""Depthwise convolution as shifted slices (``depthwise_impl='shifts'``), with its gradients.

XLA:CPU's grouped convolution is slow; the same sums as k*k shifted, strided slices of the padded
input times the per-channel taps are elementwise work XLA fuses into one loop. Autodiff's
gradients of those slices are slow in turn, so both are written by hand (a ``custom_vjp``):
:func:`depthwise_kernel_grad` (all taps of a batch chunk in one pass) and
:func:`depthwise_input_grad` (the cotangent correlated with the flipped kernel). They equal
autodiff's to float32 rounding (``tests/test_ops.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from nm_hebb_jax.ops.backend import resolve_depthwise_impl

Array = jax.Array


def depthwise_conv(x: Array, kernel: Array, strides: int, impl: str = "auto") -> Array:
    """Depthwise convolution (one filter per channel), symmetric padding ``(k - 1) // 2``.

    ``impl='conv'`` is ``lax.conv_general_dilated`` with ``feature_group_count = C`` (what
    :func:`~nm_hebb_jax.ops.convolution.conv2d` computes with ``groups = C``). ``impl='shifts'``
    computes the same sum as k*k shifted, strided slices of the padded input times the per-channel
    taps: elementwise work that XLA fuses into one loop, where XLA:CPU's grouped convolution is slow
    (BENCHMARKS.md, method notes). Its kernel gradient is :func:`depthwise_kernel_grad` (a
    ``custom_vjp``), which reads each chunk of the batch once for all k*k taps instead of streaming
    the whole batch k*k times; its input gradient is :func:`depthwise_input_grad`, the same shifted
    sum over the cotangent with the flipped kernel. Gradients agree with autodiff to float32
    rounding (summation order). Being a ``custom_vjp``, ``'shifts'`` supports reverse-mode autodiff
    only; use ``'conv'`` for ``jax.jvp`` / ``jax.jacfwd`` through the layer.

    ``'auto'``: see :func:`~nm_hebb_jax.ops.backend.resolve_depthwise_impl`.

    Args:
      x: ``[N, H, W, C]``.
      kernel: ``[k, k, 1, C]`` (HWIO with one input channel per group).
      strides: spatial stride.
      impl: ``'auto'``, ``'conv'`` or ``'shifts'``.

    Returns:
      ``[N, Ho, Wo, C]``: ``Ho = ceil(H / strides)`` for odd k, in general
      ``(H + 2 * ((k - 1) // 2) - k) // strides + 1`` (the same for ``W``).
    """
    if resolve_depthwise_impl(impl) == "conv":
        pad = (kernel.shape[0] - 1) // 2
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(strides, strides),
            padding=((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )
    return _depthwise_shifts(x, kernel, strides)


def shifted_windows(x: Array, k: int, strides: int) -> list[Array]:
    """The k*k strided windows of the zero-padded ``x`` that tap (i, j) multiplies, row-major."""
    pad = (k - 1) // 2
    n, h, w, c = x.shape
    ho, wo = (h + 2 * pad - k) // strides + 1, (w + 2 * pad - k) // strides + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return [
        jax.lax.slice(
            xp,
            (0, i, j, 0),
            (n, i + strides * (ho - 1) + 1, j + strides * (wo - 1) + 1, c),
            (1, strides, strides, 1),
        )
        for i in range(k)
        for j in range(k)
    ]


def _depthwise_sum(x: Array, kernel: Array, strides: int) -> Array:
    k = kernel.shape[0]
    out = None
    for t, window in enumerate(shifted_windows(x, k, strides)):
        term = window * kernel[t // k, t % k, 0]
        out = term if out is None else out + term
    return out


#: Bytes of input plus output gradient that one step of :func:`depthwise_kernel_grad`'s loop
#: reads (a cache-sized chunk of the batch).
DEPTHWISE_GRAD_CHUNK_BYTES = 4 << 20


def depthwise_kernel_grad(
    x: Array, g: Array, k: int, strides: int, chunk_bytes: int = DEPTHWISE_GRAD_CHUNK_BYTES
) -> Array:
    """Gradient of :func:`depthwise_conv`'s kernel: ``Σ_{n,h,w} window_ij[n,h,w,c] · g[n,h,w,c]``.

    Written as k*k reductions over the whole batch, XLA:CPU streams ``x`` and ``g`` from memory
    once per tap. Here a ``lax.scan`` over chunks of the batch (the largest divisor of ``N``
    whose ``x`` and ``g`` fit in ``chunk_bytes``) computes all taps of a chunk while it is in
    cache, in one variadic reduction (one pass over the chunk for all k*k sums, instead of k*k
    reductions), accumulating in float32 (BENCHMARKS.md, method notes).

    Args:
      x: the layer input ``[N, H, W, C]``.
      g: the output cotangent ``[N, Ho, Wo, C]``.
      k: kernel size.
      strides: spatial stride.
      chunk_bytes: cache budget of one loop step.

    Returns:
      ``[k, k, 1, C]`` in float32.
    """
    n, c = x.shape[0], x.shape[-1]
    per_example = (x[0].size * x.dtype.itemsize) + (g[0].size * g.dtype.itemsize)
    fits = [d for d in range(1, n + 1) if n % d == 0 and d * per_example <= chunk_bytes]
    b = max(fits, default=1)

    def taps(xq: Array, gq: Array) -> Array:
        # one variadic reduction: a single pass over the chunk computes all k*k sums
        prods = tuple(
            (window * gq).astype(jnp.float32) for window in shifted_windows(xq, k, strides)
        )
        sums = jax.lax.reduce(
            prods,
            tuple(jnp.zeros((), jnp.float32) for _ in prods),
            lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True)),
            (0, 1, 2),
        )
        return jnp.stack(sums)

    if b == n:
        acc = taps(x, g)
    else:
        chunks = (x.reshape(n // b, b, *x.shape[1:]), g.reshape(n // b, b, *g.shape[1:]))
        acc, _ = jax.lax.scan(
            lambda a, xg: (a + taps(*xg), None), jnp.zeros((k * k, c), jnp.float32), chunks
        )
    return acc.reshape(k, k, 1, c)


def depthwise_input_grad(g: Array, kernel: Array, strides: int, size: tuple[int, int]) -> Array:
    """Gradient of :func:`depthwise_conv`'s input: the cotangent correlated with the flipped kernel.

    Autodiff of the shifted slices gives k*k zero-padded copies of ``g * tap``, summed. XLA:CPU
    fuses that sum with the cotangent's producer (BatchNorm's backward, the activation mask),
    recomputing the producer once per tap, and checks every tap's padding bounds per element.
    Here the cotangent (dilated with ``strides - 1`` zeros between rows and columns when
    ``strides > 1``, so that it has the input's size) goes through :func:`_depthwise_sum` with
    the flipped kernel: the same k*k products and sums, as slices of one padded copy of the
    cotangent, which XLA:CPU writes once (BENCHMARKS.md, method notes).

    Args:
      g: the output cotangent ``[N, Ho, Wo, C]``.
      kernel: ``[k, k, 1, C]``.
      strides: the layer's spatial stride.
      size: the input's ``(H, W)``.

    Returns:
      ``[N, H, W, C]``.
    """
    h, w = size
    k = kernel.shape[0]
    # The forward pads (k - 1) // 2 on each side; its transpose needs k - 1 - (k - 1) // 2 before:
    # one more than _depthwise_sum's own padding when k is even.
    low = k - 1 - 2 * ((k - 1) // 2)
    if strides > 1 or low:
        _, ho, wo, _ = g.shape
        g = jax.lax.pad(
            g,
            jnp.zeros((), g.dtype),
            (
                (0, 0, 0),
                (low, h - (ho - 1) * strides - 1, strides - 1),
                (low, w - (wo - 1) * strides - 1, strides - 1),
                (0, 0, 0),
            ),
        )
    return _depthwise_sum(g, kernel[::-1, ::-1], 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shifts(x: Array, kernel: Array, strides: int) -> Array:
    return _depthwise_sum(x, kernel, strides)


def _depthwise_shifts_fwd(x, kernel, strides):
    return _depthwise_sum(x, kernel, strides), (x, kernel)


def _depthwise_shifts_bwd(strides, residuals, g):
    x, kernel = residuals
    dx = depthwise_input_grad(g, kernel, strides, x.shape[1:3])
    dk = depthwise_kernel_grad(x, g, kernel.shape[0], strides)
    return dx, dk.astype(kernel.dtype)


_depthwise_shifts.defvjp(_depthwise_shifts_fwd, _depthwise_shifts_bwd)
