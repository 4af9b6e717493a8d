"""Shared building blocks of the backbones: the tap-able conv unit, the backbone base and helpers.

Every conv layer that the Hebbian regulariser may tap (docs/method.md, "Hebbian regulariser") is a
:class:`ConvBN` unit. A unit whose Flax module path (joined by ``'/'``, relative to the backbone,
e.g. ``'stage2_block0/conv1'``) is listed in the backbone's ``hebb_layers`` sows two values into
the ``'intermediates'`` collection::

    intermediates[...path...]['activation'] = (act,)     # [N, H, W, C_out]
    intermediates[...path...]['kernel']     = (kernel,)  # [kh, kw, C_in / groups, C_out]

The kernel is the unit's own float32 parameter (the same traced array the conv uses), so a loss
computed from it sends gradients to the parameter. Which activation is sown depends on
``hebb_activation`` (see :data:`HEBB_ACTIVATIONS`); the choice never changes the forward pass.
The convolution itself is :func:`nm_hebb_jax.ops.conv`, which picks the backend's kernels: this
module and the backbone files are architecture only.

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
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nm_hebb_jax import ops

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


@dataclasses.dataclass(frozen=True)
class UnitConfig:
    """What every conv unit of a backbone shares; the backbone sets it once, blocks pass it on.

    Attributes:
      hebb_layers: fully qualified module paths of the units that sow their activation and kernel.
      hebb_activation: which activation a tapped unit sows, one of :data:`HEBB_ACTIVATIONS`.
      dtype: computation dtype (parameters stay float32).
      depthwise_impl: how a depthwise unit computes, one of :data:`nm_hebb_jax.ops.DEPTHWISE_IMPLS`.
      conv_input_barrier: one of :data:`nm_hebb_jax.ops.CONV_INPUT_BARRIERS`; ``depthwise_impl``
        and this are speed settings of :func:`nm_hebb_jax.ops.conv` (``'auto'``: the backend's
        kernels): values and gradients are the same either way.
      init_scheme: initialisation of every conv and dense layer, one of :data:`INITS`.
    """

    hebb_layers: tuple[str, ...] = ()
    hebb_activation: str = "post"
    dtype: Dtype = jnp.float32
    depthwise_impl: str = "auto"
    conv_input_barrier: str = "auto"
    init_scheme: str = "fan_out"


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
      unit: what the backbone's units share (taps, dtype, kernels, initialisation).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    groups: int = 1
    use_bias: bool = False
    use_norm: bool = True
    act: str | None = "relu"
    bn_epsilon: float = 1e-5
    unit: UnitConfig = UnitConfig()

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
        k, unit = self.kernel_size, self.unit
        kernel = self.param(
            "kernel",
            weight_init(unit.init_scheme),
            (k, k, in_features // self.groups, self.features),
            jnp.float32,
        )
        y = ops.conv(
            x.astype(unit.dtype),
            kernel.astype(unit.dtype),
            self.strides,
            self.groups,
            depthwise_impl=unit.depthwise_impl,
            input_barrier=unit.conv_input_barrier,
        )
        if self.use_bias:
            fan_in = k * k * in_features // self.groups
            bias = self.param(
                "bias", bias_init(unit.init_scheme, fan_in), (self.features,), jnp.float32
            )
            y = y + bias.astype(unit.dtype)
        pre = y
        if self.use_norm:
            y = batch_norm(train=train, epsilon=self.bn_epsilon, dtype=unit.dtype, name="bn")(y)
        y = _ACTIVATIONS[self.act](y)
        if unit.hebb_layers and "/".join(self.path) in unit.hebb_layers:
            check_hebb_activation(unit.hebb_activation)
            if unit.hebb_activation == "pre":
                tap = pre
            elif unit.hebb_activation == "post":
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
      depthwise_impl: how depthwise convolutions are computed, one of
        :data:`nm_hebb_jax.ops.DEPTHWISE_IMPLS` (``'auto'``: the backend's choice).
      conv_input_barrier: pass each convolution's input through an in-place barrier, one of
        :data:`nm_hebb_jax.ops.CONV_INPUT_BARRIERS` (``'auto'``: the backend's choice; a speed
        setting, results unchanged).
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

    #: docs/method.md [ours]: the first conv of the backbone's second stage (its Flax module path).
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
        ops.check_depthwise_impl(self.depthwise_impl)
        ops.check_conv_input_barrier(self.conv_input_barrier)
        _check_choice("init_scheme", self.init_scheme, INITS)
        super().__post_init__()

    def unit(self) -> UnitConfig:
        """The :class:`UnitConfig` every child block and :class:`ConvBN` gets (call inside
        ``__call__``).

        The layer names are qualified with this backbone's own module path, so the tap names stay
        relative to the backbone when it is nested inside a bigger Flax module.
        """
        prefix = tuple(self.path)
        return UnitConfig(
            hebb_layers=tuple("/".join((*prefix, name)) for name in self.hebb_layers),
            hebb_activation=self.hebb_activation,
            dtype=self.dtype,
            depthwise_impl=self.depthwise_impl,
            conv_input_barrier=self.conv_input_barrier,
            init_scheme=self.init_scheme,
        )

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
