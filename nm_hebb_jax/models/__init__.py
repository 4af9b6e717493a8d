"""Backbones of nm_hebb_jax, chosen by name, and access to their Hebbian taps.

Every backbone is a Flax Linen module (see :class:`~nm_hebb_jax.models.layers.Backbone`)::

    model = get_model('resnet18', num_classes=10, hebb_layers=('stage2_block0/conv1',))
    variables = model.init(jax.random.key(0), x, train=False)     # {'params', 'batch_stats'}
    (logits, aux), state = model.apply(
        variables, x, train=True, mutable=['batch_stats', 'intermediates'],
        rngs={'dropout': key})
    taps = collect_taps(state['intermediates'])   # {'stage2_block0/conv1': (act, kernel)}

``x`` is ``[N, H, W, 3]`` (32x32 CIFAR or 64x64 TinyImageNet); ``logits`` ``[N, num_classes]``
and ``aux['embedding']`` ``[N, D]`` are float32. References: docs/method.md "Backbones" and the
files named in each backbone's module docstring (kuangliu/pytorch-cifar, torchvision).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nm_hebb_jax.models.densenet import DenseNet
from nm_hebb_jax.models.efficientnet import EfficientNetV2
from nm_hebb_jax.models.layers import (
    HEBB_ACTIVATIONS,
    Array,
    Backbone,
    ConvBN,
    UnitConfig,
    describe,
)
from nm_hebb_jax.models.mobilenet import MobileNetV2
from nm_hebb_jax.models.resnet import ResNet
from nm_hebb_jax.models.vgg import VGG

__all__ = [
    "HEBB_ACTIVATIONS",
    "MODEL_NAMES",
    "Backbone",
    "ConvBN",
    "DenseNet",
    "EfficientNetV2",
    "MobileNetV2",
    "ResNet",
    "UnitConfig",
    "VGG",
    "collect_taps",
    "conv_layer_names",
    "embedding_dim",
    "get_model",
    "num_params",
    "smoke_overrides",
    "validate_hebb_layers",
]

_REGISTRY: dict[str, type[Backbone]] = {
    "resnet18": ResNet,
    "vgg11": VGG,
    "mobilenet_v2": MobileNetV2,
    "efficientnet_v2_s": EfficientNetV2,
    "densenet121": DenseNet,
}
#: The backbone names :func:`get_model` accepts (``config.model.name``).
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

_NOT_OVERRIDABLE = frozenset({"parent", "name", "num_classes"})


def _override_fields(cls: type[Backbone]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _NOT_OVERRIDABLE)


def _freeze(value: Any) -> Any:
    """Lists (e.g. from a config) to tuples, recursively, so module fields stay hashable."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def get_model(name: str, *, num_classes: int, **overrides: Any) -> Backbone:
    """Builds a backbone by name.

    Args:
      name: one of :data:`MODEL_NAMES`.
      num_classes: classifier outputs.
      **overrides: dataclass fields of that backbone, e.g. ``hebb_layers``, ``hebb_activation``,
        ``dtype`` (a dtype or its name such as ``'bfloat16'``) and the width/depth fields
        (``stage_sizes``/``width`` for ResNet, ``cfg`` for VGG and MobileNetV2,
        ``width_mult``/``depth_mult``/``stages``/``head_features`` for EfficientNetV2,
        ``block_sizes``/``growth_rate``/``init_features`` for DenseNet). Lists become tuples.

    Returns:
      The unbound Flax module. Non-empty ``hebb_layers`` are checked against
      :func:`conv_layer_names` (one abstract trace, cached).

    Raises:
      ValueError: unknown ``name``, unknown override field, bad ``hebb_activation`` or an
        ``hebb_layers`` entry that is not a conv layer of the model (one line each).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    cls = _REGISTRY[name]
    valid = _override_fields(cls)
    for key in overrides:
        if key not in valid:
            raise ValueError(
                f"unknown field {key!r} for model {name!r}; valid fields: {', '.join(valid)}"
            )
    kwargs = {key: _freeze(value) for key, value in overrides.items()}
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    model = cls(num_classes=num_classes, **kwargs)
    if model.hebb_layers:
        validate_hebb_layers(model, model.hebb_layers)
    return model


def smoke_overrides(name: str) -> dict[str, Any]:
    """The width/depth fields of backbone ``name``'s tiny CI variant (the configs' ``:smoke``).

    Raises:
      ValueError: unknown ``name``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return dict(_REGISTRY[name].smoke_overrides)


def conv_layer_names(model: nn.Module) -> tuple[str, ...]:
    """All tap-able conv layer names of ``model`` in forward order (same as the method).

    Args:
      model: a backbone.

    Returns:
      Module paths such as ``('stem', 'stage1_block0/conv1', ...)``; computed once per
      configuration with ``jax.eval_shape`` on a 32x32 input.
    """
    return describe(model).conv_layer_names


def embedding_dim(model: nn.Module) -> int:
    """Width D of ``aux['embedding']`` (cached, via ``jax.eval_shape``).

    Args:
      model: a backbone.

    Returns:
      D, e.g. 512 for ResNet-18.
    """
    return describe(model).embedding_dim


def num_params(model: nn.Module) -> int:
    """Number of scalars in ``variables['params']`` (``batch_stats`` excluded).

    Counted with ``jax.eval_shape`` (nothing is initialised) and cached per configuration.

    Args:
      model: a backbone.

    Returns:
      The parameter count.
    """
    return describe(model).num_params


def validate_hebb_layers(model: nn.Module, layers: Iterable[str]) -> None:
    """Checks that every name in ``layers`` is a tap-able conv layer of ``model``.

    Args:
      model: a backbone.
      layers: candidate names (e.g. ``config.hebb.layers``).

    Raises:
      ValueError: one line naming the first invalid layer and the first few valid names.
    """
    if isinstance(layers, str):
        raise ValueError(f"hebb layers must be a tuple of names, got the string {layers!r}")
    valid = conv_layer_names(model)
    for layer in layers:
        if layer not in valid:
            raise ValueError(
                f"{layer!r} is not a conv layer of {type(model).__name__}; valid names start "
                f"{', '.join(valid[:6])}, ... ({len(valid)} in all; see conv_layer_names(model))"
            )


def _find_taps(tree: Mapping[str, Any], prefix: tuple[str, ...], out: dict[str, Any]) -> None:
    if "activation" in tree and "kernel" in tree:
        out["/".join(prefix)] = tree
    for key, value in tree.items():
        if isinstance(value, Mapping):
            _find_taps(value, (*prefix, key), out)


def _last(value: Any) -> Array:
    """Sown values are tuples (one entry per call); the tap is the last one."""
    return value[-1] if isinstance(value, tuple | list) else value


def collect_taps(
    intermediates: Mapping[str, Any], layers: Iterable[str] | None = None
) -> dict[str, tuple[Array, Array]]:
    """Gathers the sown ``(activation, kernel)`` pairs from the ``'intermediates'`` collection.

    Args:
      intermediates: ``state['intermediates']`` from
        ``model.apply(..., mutable=['intermediates', ...])`` (the whole mutable-state dict is
        accepted too). Tap names are module paths relative to the backbone; when the backbone was
        nested inside another module, a requested name also matches a unique ``'.../name'``.
      layers: names to return, in this order; ``None`` = every sown layer.

    Returns:
      ``{name: (activation [N, H, W, C], kernel [kh, kw, C_in / groups, C])}``. The kernel is the
      float32 parameter itself, so gradients reach ``params`` through it.

    Raises:
      ValueError: a requested layer was not sown (one line: the model must be built with it in
        ``hebb_layers``).
    """
    if "intermediates" in intermediates and isinstance(intermediates["intermediates"], Mapping):
        intermediates = intermediates["intermediates"]
    found: dict[str, Any] = {}
    _find_taps(intermediates, (), found)
    pairs = {key: (_last(v["activation"]), _last(v["kernel"])) for key, v in found.items()}
    if layers is None:
        return pairs
    if isinstance(layers, str):
        layers = (layers,)
    result = {}
    for layer in layers:
        if layer in pairs:
            result[layer] = pairs[layer]
            continue
        matches = [key for key in pairs if key.endswith("/" + layer)]
        if len(matches) != 1:
            raise ValueError(
                f"layer {layer!r} was not sown; build the model with it in hebb_layers and apply "
                f"with mutable=['intermediates'] (sown: {', '.join(pairs) or 'none'})"
            )
        result[layer] = pairs[matches[0]]
    return result
