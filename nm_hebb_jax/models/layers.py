"""Shared building blocks of the backbones: the tap-able conv unit, the backbone base and helpers.

Every conv layer that the Hebbian regulariser may tap (METHOD.md, "Hebbian regulariser") is a
:class:`ConvBN` unit. A unit whose Flax module path (joined by ``'/'``, relative to the backbone,
e.g. ``'stage2_block0/conv1'``) is listed in the backbone's ``hebb_layers`` sows two values into
the ``'intermediates'`` collection::

    intermediates[...path...]['activation'] = (act,)     # [N, H, W, C_out]
    intermediates[...path...]['kernel']     = (kernel,)  # [kh, kw, C_in / groups, C_out]

The kernel is the unit's own float32 parameter (the same traced array the conv uses), so a loss
computed from it sends gradients to the parameter. Which activation is sown depends on
``hebb_activation`` (see :data:`HEBB_ACTIVATIONS`); the choice never changes the forward pass.

Conventions shared by all backbones:
  * Input NHWC; convolutions pad symmetrically by ``(k - 1) // 2`` like PyTorch's
    ``padding=k // 2`` (Flax's ``'SAME'`` pads asymmetrically for stride 2 and would not match).
  * Initialisation (``init_scheme``, see :data:`INITS`): by default conv kernels like
    ``torch.nn.init.kaiming_normal_(mode='fan_out')`` (the torchvision convention) and the
    classifier with Flax's default initialisers; ``'torch_default'`` is PyTorch's own default
    for every conv and linear layer (what kuangliu/pytorch-cifar models get).
  * BatchNorm: ``use_running_average=not train``, momentum 0.9 (PyTorch ``momentum=0.1``), epsilon
    as in the PyTorch reference, no ``axis_name`` (cross-device statistics come from jit sharding).
  * Parameters are float32; ``dtype`` is the computation dtype; logits and the embedding are
    returned as float32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

#: Valid values of ``hebb_activation``: ``'post'`` = after BatchNorm and the unit's activation,
#: ``'pre'`` = raw conv output, ``'maxpool'`` = ``'post'`` followed by a 2x2/stride-2 VALID max-pool
#: (left unpooled when the map is smaller than 2x2).
HEBB_ACTIVATIONS: tuple[str, ...] = ("post", "pre", "maxpool")

#: BatchNorm momentum (Flax convention; PyTorch's default ``momentum=0.1`` is the same EMA).
BN_MOMENTUM = 0.9

#: ``torch.nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu')`` for HWIO kernels.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

#: Valid values of a backbone's ``init_scheme``: ``'fan_out'`` = conv kernels ~
#: :data:`conv_kernel_init`, conv biases 0, the classifier Flax's default (LeCun normal, bias 0);
#: ``'torch_default'`` = PyTorch's ``nn.Conv2d`` / ``nn.Linear`` defaults for every conv and
#: dense layer (``kaiming_uniform_(a=√5)``, i.e. weights and biases ~ U(±1/√fan_in)).
INITS: tuple[str, ...] = ("fan_out", "torch_default")


def weight_init(init: str, *, dense: bool = False) -> Callable:
    """The kernel initialiser of a conv (``dense=True``: the classifier) for an ``init_scheme``."""
    _check_choice("init_scheme", init, INITS)
    if init == "torch_default":
        return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    return nn.initializers.lecun_normal() if dense else conv_kernel_init


def bias_init(init: str, fan_in: int) -> Callable:
    """The bias initialiser for ``init_scheme``: zeros, or U(±1/√fan_in) for ``'torch_default'``."""
    _check_choice("init_scheme", init, INITS)
    if init == "torch_default":
        bound = 1.0 / float(fan_in) ** 0.5

        def uniform(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        return uniform
    return nn.initializers.zeros_init()


_ACTIVATIONS: dict[str | None, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "silu": nn.silu,
    None: lambda x: x,
}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises a one-line ValueError naming ``name`` and ``choices`` unless ``value`` is one."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {choices}")


def check_hebb_activation(value: str) -> None:
    """Raises a one-line ValueError unless ``value`` is one of :data:`HEBB_ACTIVATIONS`.

    Args:
      value: the requested ``hebb_activation``.

    Raises:
      ValueError: ``value`` is not a known tap mode.
    """
    _check_choice("hebb_activation", value, HEBB_ACTIVATIONS)


def tap_pool(x: Array) -> Array:
    """The ``'maxpool'`` tap transform: 2x2 max-pool, stride 2, VALID.

    Args:
      x: activation map ``[N, H, W, C]``.

    Returns:
      ``[N, H // 2, W // 2, C]``, or ``x`` unchanged when ``H < 2`` or ``W < 2`` (a 1x1 map has
      nothing to pool).
    """
    if x.shape[1] < 2 or x.shape[2] < 2:
        return x
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


#: Valid values of ``depthwise_impl`` (see :func:`depthwise_conv`).
DEPTHWISE_IMPLS: tuple[str, ...] = ("auto", "conv", "shifts")

#: Valid values of ``conv_input_barrier`` (see :func:`materialize`): ``'auto'`` = on for the CPU
#: backend only.
CONV_INPUT_BARRIERS: tuple[str, ...] = ("auto", "on", "off")


def tap_kwargs(module: nn.Module) -> dict[str, Any]:
    """``hebb_layers``, ``hebb_activation``, ``dtype``, ``depthwise_impl``, ``conv_input_barrier``,
    ``init_scheme``.

    What a block passes on to its units. Blocks live inside a backbone whose ``unit_kwargs``
    already resolved the tap names, so the values are forwarded unchanged.
    """
    return {
        "hebb_layers": module.hebb_layers,
        "hebb_activation": module.hebb_activation,
        "dtype": module.dtype,
        "depthwise_impl": module.depthwise_impl,
        "conv_input_barrier": module.conv_input_barrier,
        "init_scheme": module.init_scheme,
    }


def check_depthwise_impl(value: str) -> None:
    """Raises a one-line ValueError unless ``value`` is one of :data:`DEPTHWISE_IMPLS`."""
    _check_choice("depthwise_impl", value, DEPTHWISE_IMPLS)


def resolve_depthwise_impl(impl: str) -> str:
    """``'auto'`` -> ``'shifts'`` on the CPU backend, ``'conv'`` elsewhere; checks the value.

    Raises:
      ValueError: ``impl`` is not one of :data:`DEPTHWISE_IMPLS`.
    """
    check_depthwise_impl(impl)
    if impl == "auto":
        return "shifts" if jax.default_backend() == "cpu" else "conv"
    return impl


def check_conv_input_barrier(value: str) -> None:
    """Raises a one-line ``ValueError`` unless ``value`` is in :data:`CONV_INPUT_BARRIERS`."""
    _check_choice("conv_input_barrier", value, CONV_INPUT_BARRIERS)


def resolve_conv_input_barrier(value: str) -> bool:
    """``'auto'`` -> on for the CPU backend, off elsewhere; checks the value."""
    check_conv_input_barrier(value)
    if value == "auto":
        return jax.default_backend() == "cpu"
    return value == "on"


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
    transpose with strided stores instead of XLA's tiled transpose (BENCHMARKS.md: cases
    ``dense_layer_after_bn`` and ``dense_layer_after_bn_barrier`` of
    ``experiments/bench/conv_micro.py``). Here ``x`` is rewritten in place by a
    ``dynamic_update_slice`` of a slice of its own. XLA does not fuse an in-place update into its
    consumers, so the transpose reads the stored ``x``.

    The values are unchanged (bit for bit) and the tangent passes through unchanged
    (``custom_jvp``), so the backward pass has no extra work (it transposes to the identity) and
    forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) still works; the compiled training step is
    the same as with a ``custom_vjp`` identity. On GPU and TPU the compilers choose layouts
    themselves, so :func:`conv2d` applies this on CPU only by default (``conv_input_barrier``).
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
    :func:`conv2d_as_matmul` instead: XLA swaps such a convolution's operands, and XLA:CPU then
    runs it ~100x slower than the equivalent matrix product (BENCHMARKS.md, notes: "maps smaller
    than the kernel").
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

    The k*k shifted, strided windows of the zero-padded input (:func:`_shifted_windows`, the
    depthwise sum's) are concatenated along channels (``[N, Ho, Wo, k*k*C]``, tap-major like the
    HWIO kernel) and multiplied by the kernel
    reshaped to ``[k*k*C, C_out]``. The same sums as the convolution, in another order (float
    rounding). Meant for small maps, where the window copies cost little.
    """
    k, _, c, c_out = kernel.shape
    windows = _shifted_windows(x, k, strides)
    n, ho, wo, _ = windows[0].shape
    patches = jnp.concatenate(windows, axis=-1).reshape(n * ho * wo, k * k * c)
    return (patches @ kernel.reshape(k * k * c, c_out)).reshape(n, ho, wo, c_out)


def depthwise_conv(x: Array, kernel: Array, strides: int, impl: str = "auto") -> Array:
    """Depthwise convolution (one filter per channel), symmetric padding ``(k - 1) // 2``.

    ``impl='conv'`` is ``lax.conv_general_dilated`` with ``feature_group_count = C``.
    ``impl='shifts'`` computes the same sum as k*k shifted, strided slices of the padded input
    times the per-channel taps: elementwise work that XLA fuses into one loop, where XLA:CPU's
    grouped convolution is slow (BENCHMARKS.md, ``experiments/bench/conv_micro.py``). Its kernel
    gradient is :func:`depthwise_kernel_grad` (a ``custom_vjp``), which reads each chunk of the
    batch once for all k*k taps instead of streaming the whole batch k*k times; its input
    gradient is :func:`depthwise_input_grad`, the same shifted sum over the cotangent with the
    flipped kernel. Gradients agree with autodiff to float32 rounding (summation order).
    Being a ``custom_vjp``, ``'shifts'`` supports reverse-mode autodiff only; use ``'conv'`` for
    ``jax.jvp`` / ``jax.jacfwd`` through the layer.

    ``'auto'``: see :func:`resolve_depthwise_impl`.

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
        return conv2d(x, kernel, strides, groups=x.shape[-1])
    return _depthwise_shifts(x, kernel, strides)


def _shifted_windows(x: Array, k: int, strides: int) -> list[Array]:
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
    for t, window in enumerate(_shifted_windows(x, k, strides)):
        term = window * kernel[t // k, t % k, 0]
        out = term if out is None else out + term
    return out


#: Bytes of input plus output gradient that one step of :func:`depthwise_kernel_grad`'s loop
#: reads (a cache-sized chunk of the batch; ``experiments/bench/conv_micro.py`` picks it).
DEPTHWISE_GRAD_CHUNK_BYTES = 4 << 20


def depthwise_kernel_grad(
    x: Array, g: Array, k: int, strides: int, chunk_bytes: int = DEPTHWISE_GRAD_CHUNK_BYTES
) -> Array:
    """Gradient of :func:`depthwise_conv`'s kernel: ``Σ_{n,h,w} window_ij[n,h,w,c] · g[n,h,w,c]``.

    Written as k*k reductions over the whole batch, XLA:CPU streams ``x`` and ``g`` from memory
    once per tap. Here a ``lax.scan`` over chunks of the batch (the largest divisor of ``N``
    whose ``x`` and ``g`` fit in ``chunk_bytes``) computes all taps of a chunk while it is in
    cache, in one variadic reduction (one pass over the chunk for all k*k sums, instead of k*k
    reductions), accumulating in float32 (BENCHMARKS.md, conv_micro's
    ``depthwise_shifts_dw*`` cases).

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
            (window * gq).astype(jnp.float32) for window in _shifted_windows(xq, k, strides)
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
    cotangent, which XLA:CPU writes once (BENCHMARKS.md, notes: "flipped-kernel input gradient").

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


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to a multiple of ``divisor`` (torchvision ``_make_divisible``).

    Never goes below ``min_value`` (default ``divisor``) nor more than 10% below ``value``.
    Reference: torchvision/models/_utils.py and the MobileNetV2 / EfficientNet TF code.

    Args:
      value: the unrounded channel count.
      divisor: the multiple to round to.
      min_value: the smallest result allowed.

    Returns:
      The rounded channel count.
    """
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def batch_norm(*, train: bool, epsilon: float, dtype: Dtype, name: str | None = None) -> nn.Module:
    """The BatchNorm every backbone uses (momentum 0.9, float32 params, no ``axis_name``).

    Args:
      train: batch statistics (and running-average updates) when True, running averages otherwise.
      epsilon: variance epsilon of the PyTorch reference (1e-5, EfficientNetV2 1e-3).
      dtype: computation dtype.
      name: Flax module name.

    Returns:
      An ``nn.BatchNorm`` module.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class ConvBN(nn.Module):
    """Conv -> (BatchNorm) -> (activation): the one tap-able conv unit of every backbone.

    Parameters: ``kernel`` ``[k, k, C_in / groups, features]`` (float32), ``bias`` ``[features]``
    when ``use_bias``, and the BatchNorm child ``bn`` when ``use_norm``.

    When ``'/'.join(self.path)`` is in ``hebb_layers`` the unit sows ``'activation'`` (chosen by
    ``hebb_activation``) and ``'kernel'`` into ``'intermediates'``; otherwise it sows nothing.
    For a unit without BatchNorm and activation, ``'post'`` equals ``'pre'`` (the raw output).

    Attributes:
      features: output channels C_out.
      kernel_size: square kernel size k (odd; padding ``(k - 1) // 2`` on every side).
      strides: spatial stride.
      groups: feature groups (``groups == C_in`` is a depthwise conv).
      use_bias: add a conv bias (PyTorch ``bias=True``).
      use_norm: apply BatchNorm after the conv.
      act: ``'relu'``, ``'silu'`` or ``None`` (no activation, e.g. a linear projection).
      bn_epsilon: BatchNorm epsilon.
      hebb_layers: fully qualified module paths of the units that sow.
      hebb_activation: one of :data:`HEBB_ACTIVATIONS`.
      dtype: computation dtype.
      depthwise_impl: how a depthwise unit (``groups == C_in == features``) computes its
        convolution, one of :data:`DEPTHWISE_IMPLS` (see :func:`depthwise_conv`); other units
        ignore it.
      conv_input_barrier: whether a non-depthwise unit passes its input through
        :func:`materialize`, one of :data:`CONV_INPUT_BARRIERS` (``'auto'``: on CPU only). The
        values and gradients are the same either way; only XLA:CPU's speed changes.
      init_scheme: initialisation scheme, one of :data:`INITS`.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    groups: int = 1
    use_bias: bool = False
    use_norm: bool = True
    act: str | None = "relu"
    bn_epsilon: float = 1e-5
    hebb_layers: tuple[str, ...] = ()
    hebb_activation: str = "post"
    dtype: Dtype = jnp.float32
    depthwise_impl: str = "auto"
    conv_input_barrier: str = "auto"
    init_scheme: str = "fan_out"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Applies the unit.

        Args:
          x: ``[N, H, W, C_in]``.
          train: BatchNorm mode.

        Returns:
          ``[N, ceil(H / strides), ceil(W / strides), features]`` in ``dtype``.
        """
        in_features = x.shape[-1]
        if in_features % self.groups:
            raise ValueError(
                f"{in_features} input channels are not divisible by groups={self.groups}"
            )
        k = self.kernel_size
        kernel = self.param(
            "kernel",
            weight_init(self.init_scheme),
            (k, k, in_features // self.groups, self.features),
            jnp.float32,
        )
        x, kernel_c = x.astype(self.dtype), kernel.astype(self.dtype)
        barrier = resolve_conv_input_barrier(self.conv_input_barrier)
        if self.groups > 1 and self.groups == in_features == self.features:
            y = depthwise_conv(x, kernel_c, self.strides, self.depthwise_impl)
        else:
            y = conv2d(x, kernel_c, self.strides, self.groups, input_barrier=barrier)
        if self.use_bias:
            fan_in = k * k * in_features // self.groups
            bias = self.param(
                "bias", bias_init(self.init_scheme, fan_in), (self.features,), jnp.float32
            )
            y = y + bias.astype(self.dtype)
        pre = y
        if self.use_norm:
            y = batch_norm(train=train, epsilon=self.bn_epsilon, dtype=self.dtype, name="bn")(y)
        y = _ACTIVATIONS[self.act](y)
        if self.hebb_layers and "/".join(self.path) in self.hebb_layers:
            check_hebb_activation(self.hebb_activation)
            if self.hebb_activation == "pre":
                tap = pre
            elif self.hebb_activation == "post":
                tap = y
            else:
                tap = tap_pool(y)
            self.sow("intermediates", "activation", tap)
            self.sow("intermediates", "kernel", kernel)
        return y


class Backbone(nn.Module):
    """Base class of the backbones: the shared fields, validation, head and introspection.

    Subclasses implement ``__call__(x, train=False) -> (logits, {'embedding': ...})`` and set the
    class attribute ``default_hebb_layer``.

    Attributes:
      num_classes: classifier outputs.
      hebb_layers: module paths (relative to the backbone, e.g. ``'stage2_block0/conv1'``) of the
        conv units that sow their activation and kernel; see ``conv_layer_names()``.
      hebb_activation: which activation the tapped units sow, one of :data:`HEBB_ACTIVATIONS`.
      dtype: computation dtype (params stay float32; logits and embedding come back float32).
      depthwise_impl: how depthwise convolutions are computed, one of :data:`DEPTHWISE_IMPLS`
        (``'auto'``: shifted slices on CPU, ``lax`` grouped convolution elsewhere).
      conv_input_barrier: pass each convolution's input through :func:`materialize`, one of
        :data:`CONV_INPUT_BARRIERS` (``'auto'``: on CPU only; a speed setting, results unchanged).
      init_scheme: initialisation scheme of every conv and dense layer, one of :data:`INITS`
        (``'fan_out'``; ``'torch_default'`` = PyTorch's defaults).
    """

    num_classes: int
    hebb_layers: tuple[str, ...] = ()
    hebb_activation: str = "post"
    dtype: Dtype = jnp.float32
    depthwise_impl: str = "auto"
    conv_input_barrier: str = "auto"
    init_scheme: str = "fan_out"

    #: METHOD.md [ours]: the first conv of the backbone's second stage, by its Flax module path.
    default_hebb_layer: ClassVar[str] = ""
    #: The tiny variant for CI (``get_model(..., smoke=True)``, the configs' ``:smoke``): width and
    #: depth fields that make the model compile and run in seconds.
    smoke_overrides: ClassVar[dict] = {}

    def __post_init__(self) -> None:
        """Checks ``hebb_activation`` and makes ``hebb_layers`` a tuple (one-line errors)."""
        if isinstance(self.hebb_layers, str):
            raise ValueError(
                f"hebb_layers must be a tuple of layer names, got the string {self.hebb_layers!r}; "
                f"write ({self.hebb_layers!r},)"
            )
        if not isinstance(self.hebb_layers, tuple):
            object.__setattr__(self, "hebb_layers", tuple(self.hebb_layers))
        check_hebb_activation(self.hebb_activation)
        check_depthwise_impl(self.depthwise_impl)
        check_conv_input_barrier(self.conv_input_barrier)
        _check_choice("init_scheme", self.init_scheme, INITS)
        super().__post_init__()

    def unit_kwargs(self) -> dict[str, Any]:
        """Fields to pass to every child block / :class:`ConvBN` (call inside ``__call__``).

        The layer names are qualified with this backbone's own module path, so the tap names stay
        relative to the backbone when it is nested inside a bigger Flax module.

        Returns:
          ``{'hebb_layers': ..., 'hebb_activation': ..., 'dtype': ..., 'depthwise_impl': ...,
          'conv_input_barrier': ..., 'init_scheme': ...}``.
        """
        prefix = tuple(self.path)
        return {
            "hebb_layers": tuple("/".join((*prefix, name)) for name in self.hebb_layers),
            "hebb_activation": self.hebb_activation,
            "dtype": self.dtype,
            "depthwise_impl": self.depthwise_impl,
            "conv_input_barrier": self.conv_input_barrier,
            "init_scheme": self.init_scheme,
        }

    def pool_and_classify(
        self, x: Array, train: bool, dropout_rate: float = 0.0
    ) -> tuple[Array, dict[str, Array]]:
        """Global average pool -> (dropout) -> Dense classifier named ``'classifier'``.

        Args:
          x: final feature map ``[N, H, W, D]``.
          train: enables dropout (needs the ``'dropout'`` rng when ``dropout_rate > 0``).
          dropout_rate: dropout before the classifier (EfficientNet: 0.2).

        Returns:
          ``(logits [N, num_classes], {'embedding': [N, D]})`` in float32 (float64 for a float64
          model); the embedding is taken before dropout.
        """
        out_dtype = jnp.promote_types(self.dtype, jnp.float32)  # bf16 -> f32; f64 stays (tests)
        embedding = jnp.mean(x.astype(out_dtype), axis=(1, 2))
        h = nn.Dropout(rate=dropout_rate, deterministic=not train)(embedding)
        logits = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=weight_init(self.init_scheme, dense=True),
            bias_init=bias_init(self.init_scheme, h.shape[-1]),
            name="classifier",
        )(h.astype(self.dtype))
        return logits.astype(out_dtype), {"embedding": embedding}

    @nn.nowrap
    def conv_layer_names(self) -> tuple[str, ...]:
        """All tap-able conv layer names (``ConvBN`` module paths), in forward order.

        Computed once per configuration with ``jax.eval_shape`` on a ``[1, 32, 32, 3]`` input (no
        FLOPs, no allocation) and cached.

        Returns:
          Names such as ``('stem', 'stage1_block0/conv1', ...)``.
        """
        return describe(self).conv_layer_names

    @property
    def embedding_dim(self) -> int:
        """Width D of ``aux['embedding']`` (cached, via ``jax.eval_shape``)."""
        return describe(self).embedding_dim


@dataclasses.dataclass(frozen=True)
class Description:
    """Static facts about a backbone configuration, found with ``jax.eval_shape``.

    Attributes:
      conv_layer_names: ``ConvBN`` module paths in forward order.
      embedding_dim: width of the embedding.
      num_params: number of scalars in the ``'params'`` collection (``batch_stats`` excluded).
    """

    conv_layer_names: tuple[str, ...]
    embedding_dim: int
    num_params: int


_DESCRIPTIONS: dict[Any, Description] = {}


def _config_key(model: nn.Module) -> tuple[Any, ...]:
    """Hashable key of a module's configuration, ignoring ``hebb_layers``/``parent``/``name``."""
    skip = {"parent", "name", "hebb_layers"}
    values = tuple(
        (f.name, repr(getattr(model, f.name)))
        for f in dataclasses.fields(model)
        if f.name not in skip
    )
    return (type(model).__module__, type(model).__qualname__, values)


def describe(model: nn.Module) -> Description:
    """Traces ``model.init`` abstractly on ``[1, 32, 32, 3]`` and reports its static facts.

    Conv units are recorded, in call order, with a Flax method interceptor. The result is cached
    per configuration (``hebb_layers`` excluded: it does not change the architecture).

    Args:
      model: an unbound backbone.

    Returns:
      The :class:`Description` of the configuration.
    """
    key = _config_key(model)
    if key not in _DESCRIPTIONS:
        plain = model.clone(parent=None, name=None, hebb_layers=())
        names: list[str] = []

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, ConvBN) and context.method_name == "__call__":
                name = "/".join(context.module.path)
                if name not in names:
                    names.append(name)
            return next_fun(*args, **kwargs)

        x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
        with nn.intercept_methods(record):
            (_, aux), variables = jax.eval_shape(
                lambda inputs: plain.init_with_output(jax.random.key(0), inputs, train=False), x
            )
        num_params = sum(int(leaf.size) for leaf in jax.tree.leaves(variables.get("params", {})))
        _DESCRIPTIONS[key] = Description(
            conv_layer_names=tuple(names),
            embedding_dim=int(aux["embedding"].shape[-1]),
            num_params=num_params,
        )
    return _DESCRIPTIONS[key]
