"""EfficientNetV2-S (Tan & Le, "EfficientNetV2: Smaller Models and Faster Training",
arXiv 2104.00298).

Reference: torchvision ``torchvision/models/efficientnet.py``, ``efficientnet_v2_s``: a 3x3 stem
conv to 24 channels, stages of FusedMBConv (3 stages) and MBConv (3 stages) blocks, SiLU
activations, squeeze-and-excitation in MBConv with ``squeeze = max(1, C_in // 4)``, BatchNorm
epsilon 1e-3, a 1x1 head conv to 1280, dropout 0.2 and ``Linear(1280, num_classes)``; stochastic
depth with probability ``0.2 * block_index / total_blocks`` on the residual branches. 20,190,298
parameters for 10 classes, matched exactly.

Deviation (CIFAR-style, docs/method.md "Backbones"): the stem stride is 1 instead of 2
(``stem_strides`` field), so a 32x32 input ends in a 2x2 map (64x64 in 4x4) instead of 1x1.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from nm_hebb_jax.models.layers import (
    Array,
    Backbone,
    ConvBN,
    UnitConfig,
    bias_init,
    make_divisible,
    weight_init,
)

#: BatchNorm epsilon of torchvision's ``efficientnet_v2_s`` (``partial(nn.BatchNorm2d, eps=1e-3)``).
BN_EPSILON = 1e-3

#: torchvision ``_efficientnet_conf('efficientnet_v2_s')`` as
#: ``(block, expand_ratio, kernel, stride, out_channels, num_layers)``; the input width of each
#: stage is the previous stage's output (24 = ``stem_features`` for the first).
EFFICIENTNET_V2_S_STAGES: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("fused", 1, 3, 1, 24, 2),
    ("fused", 4, 3, 2, 48, 4),
    ("fused", 4, 3, 2, 64, 4),
    ("mbconv", 4, 3, 2, 128, 6),
    ("mbconv", 6, 3, 1, 160, 9),
    ("mbconv", 6, 3, 2, 256, 15),
)

_BLOCK_TYPES = ("fused", "mbconv")


class SqueezeExcitation(nn.Module):
    """torchvision ``SqueezeExcitation`` with SiLU: GAP -> fc1 -> SiLU -> fc2 -> sigmoid -> scale.

    ``fc1``/``fc2`` are the reference's 1x1 convs with bias, written as Dense layers on the pooled
    ``[N, 1, 1, C]`` tensor (same parameters and computation).

    Attributes:
      squeeze_features: hidden width.
      unit: the backbone's :class:`~nm_hebb_jax.models.UnitConfig` (its dtype and initialisation:
        the 1x1 convs are conv layers).
    """

    squeeze_features: int
    unit: UnitConfig = UnitConfig()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Rescales the channels of ``x`` ``[N, H, W, C]``; same shape out."""
        dense = lambda features, fan_in, name: nn.Dense(
            features,
            dtype=self.unit.dtype,
            param_dtype=jnp.float32,
            kernel_init=weight_init(self.unit.init_scheme),
            bias_init=bias_init(self.unit.init_scheme, fan_in),
            name=name,
        )
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = nn.silu(dense(self.squeeze_features, x.shape[-1], "fc1")(scale))
        scale = nn.sigmoid(dense(x.shape[-1], self.squeeze_features, "fc2")(scale))
        return x * scale


class MBConvBlock(nn.Module):
    """torchvision ``MBConv`` / ``FusedMBConv`` with its stochastic-depth residual.

    Units, ``block == 'mbconv'``: ``conv1`` (1x1 expand, BN, SiLU; only when the expanded width
    differs from ``C_in``), ``conv2`` (kxk depthwise, stride, BN, SiLU), ``se``, ``conv3`` (1x1
    project, BN, no activation). ``block == 'fused'``: ``conv1`` (kxk, stride, BN, SiLU) to the
    expanded width and ``conv2`` (1x1 project, BN, no activation), or ``conv1`` alone (kxk straight
    to ``out_features``, BN, SiLU) when the expanded width equals ``C_in``. Projection convs have
    no activation, so their 'post' is the BN output. The residual (stride 1 and
    ``C_in == out_features``) drops the whole branch per example with probability
    ``stochastic_depth_prob`` in training (torchvision ``StochasticDepth(p, 'row')``; needs the
    ``'dropout'`` rng).

    Attributes:
      block: ``'fused'`` or ``'mbconv'``.
      expand_ratio: expansion factor.
      kernel_size: kernel of the spatial conv.
      strides: stride of the spatial conv.
      out_features: output channels.
      stochastic_depth_prob: drop probability of the residual branch.
      unit: what the backbone's conv units share (:class:`~nm_hebb_jax.models.UnitConfig`).
    """

    block: str
    expand_ratio: int
    kernel_size: int
    strides: int
    out_features: int
    stochastic_depth_prob: float = 0.0
    unit: UnitConfig = UnitConfig()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Maps ``[N, H, W, C_in]`` to ``[N, H / strides, W / strides, out_features]``."""
        kw = dict(bn_epsilon=BN_EPSILON, unit=self.unit)
        in_features = x.shape[-1]
        expanded = make_divisible(in_features * self.expand_ratio, 8)
        k, s = self.kernel_size, self.strides
        if self.block == "fused":
            if expanded != in_features:
                out = ConvBN(expanded, k, s, act="silu", name="conv1", **kw)(x, train)
                out = ConvBN(self.out_features, 1, act=None, name="conv2", **kw)(out, train)
            else:
                out = ConvBN(self.out_features, k, s, act="silu", name="conv1", **kw)(x, train)
        elif self.block == "mbconv":
            out = x
            if expanded != in_features:
                out = ConvBN(expanded, 1, act="silu", name="conv1", **kw)(out, train)
            out = ConvBN(expanded, k, s, groups=expanded, act="silu", name="conv2", **kw)(
                out, train
            )
            out = SqueezeExcitation(max(1, in_features // 4), unit=self.unit, name="se")(out)
            out = ConvBN(self.out_features, 1, act=None, name="conv3", **kw)(out, train)
        else:
            raise ValueError(f"unknown block type {self.block!r}; choose one of {_BLOCK_TYPES}")
        if s == 1 and in_features == self.out_features:
            out = nn.Dropout(
                rate=self.stochastic_depth_prob, broadcast_dims=(1, 2, 3), deterministic=not train
            )(out)
            out = out + x.astype(self.unit.dtype)
        return out


class EfficientNetV2(Backbone):
    """EfficientNetV2 (torchvision ``efficientnet_v2_s`` by default) with a stride-1 stem.

    Module paths: ``stem``, ``stage{i}_block{j}/{conv1,conv2,conv3}`` (stages from 1, blocks from
    0; see :class:`MBConvBlock` for which units a block has), ``head`` (1x1 conv to
    ``head_features``, BN, SiLU), ``classifier``. Embedding dim: ``head_features`` (1280).

    Call: ``model.apply(variables, x, train=False)`` with ``x`` ``[N, H, W, 3]`` returns
    ``(logits [N, num_classes] float32, {'embedding': [N, D] float32})``. With ``train=True`` pass
    ``rngs={'dropout': key}`` (classifier dropout and stochastic depth) and
    ``mutable=['batch_stats']``.

    Attributes:
      num_classes: classifier outputs.
      hebb_layers: conv units that sow (see ``conv_layer_names()``).
      hebb_activation: 'post' | 'pre' | 'maxpool'.
      dtype: computation dtype.
      stages: ``(block, expand_ratio, kernel, stride, out_channels, num_layers)`` rows,
        :data:`EFFICIENTNET_V2_S_STAGES`.
      stem_features: stem width (24).
      head_features: head conv width (1280; not scaled by ``width_mult``).
      width_mult: stem and stage widths become ``make_divisible(c * width_mult, 8)`` (torchvision
        ``MBConvConfig.adjust_channels``; identity at 1.0 for V2-S).
      depth_mult: stage depths become ``ceil(n * depth_mult)`` (``MBConvConfig.adjust_depth``).
      dropout_rate: dropout before the classifier (0.2).
      stochastic_depth_prob: final stochastic-depth probability (0.2).
      stem_strides: stem stride; 1 for CIFAR-style inputs (torchvision: 2).
    """

    stages: tuple[tuple[str, int, int, int, int, int], ...] = EFFICIENTNET_V2_S_STAGES
    stem_features: int = 24
    head_features: int = 1280
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dropout_rate: float = 0.2
    stochastic_depth_prob: float = 0.2
    stem_strides: int = 1

    default_hebb_layer: ClassVar[str] = "stage2_block0/conv1"
    smoke_overrides: ClassVar[dict] = {
        "stages": (
            ("fused", 1, 3, 1, 8, 1),
            ("fused", 4, 3, 2, 16, 2),
            ("mbconv", 4, 3, 2, 16, 2),
        ),
        "stem_features": 8,
        "head_features": 32,
    }

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        """Classifies ``x`` ``[N, H, W, 3]``; returns ``(logits, {'embedding': ...})``."""
        unit = self.unit()
        width = lambda c: make_divisible(c * self.width_mult, 8)
        depths = [int(math.ceil(row[5] * self.depth_mult)) for row in self.stages]
        total_blocks = sum(depths)
        x = ConvBN(
            width(self.stem_features),
            3,
            self.stem_strides,
            act="silu",
            bn_epsilon=BN_EPSILON,
            name="stem",
            unit=unit,
        )(x, train)
        block_id = 0
        for i, ((block, expand, kernel, stride, out, _), depth) in enumerate(
            zip(self.stages, depths, strict=True), start=1
        ):
            for j in range(depth):
                x = MBConvBlock(
                    block,
                    expand,
                    kernel,
                    stride if j == 0 else 1,
                    width(out),
                    stochastic_depth_prob=self.stochastic_depth_prob * block_id / total_blocks,
                    name=f"stage{i}_block{j}",
                    unit=unit,
                )(x, train)
                block_id += 1
        x = ConvBN(
            self.head_features, 1, act="silu", bn_epsilon=BN_EPSILON, name="head", unit=unit
        )(x, train)
        return self.pool_and_classify(x, train, dropout_rate=self.dropout_rate)
