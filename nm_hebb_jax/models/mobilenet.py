"""CIFAR MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
arXiv 1801.04381).

Reference: kuangliu/pytorch-cifar ``models/mobilenetv2.py``, ``MobileNetV2``: a 3x3 stride-1 stem
conv to 32 channels (CIFAR change from stride 2), inverted-residual blocks from the cfg
``(expansion, out_planes, num_blocks, stride)`` = (1,16,1,1), (6,24,2,1) (CIFAR change from stride
2), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1); a 1x1 conv 320 -> 1280 with
BN-ReLU, average pooling and ``Linear(1280, num_classes)``. As in that file every block has the 1x1
expansion conv (also for expansion 1), and a stride-1 block adds a shortcut: identity when the
widths agree, 1x1 conv + BN otherwise; stride-2 blocks have none. 2,296,922 parameters for 10
classes, matched exactly. Pooling is global (the reference's ``avg_pool2d(out, 4)`` at 32x32).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn

from nm_hebb_jax.models.layers import Array, Backbone, ConvBN, UnitConfig, make_divisible

#: kuangliu/pytorch-cifar ``MobileNetV2.cfg``: ``(expansion, out_planes, num_blocks, stride)``.
MOBILENET_V2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """pytorch-cifar ``Block``: expand 1x1 -> depthwise 3x3 -> linear project 1x1 (+ shortcut).

    Units: ``conv1`` (1x1 to ``expansion * C_in``, BN, ReLU), ``conv2`` (3x3 depthwise, stride,
    BN, ReLU), ``conv3`` (1x1 to ``out_features``, BN, no activation: linear bottleneck, so its
    'post' is the BN output), and for stride 1 with ``C_in != out_features`` ``shortcut`` (1x1,
    BN, no activation).

    Attributes:
      expansion: expansion factor of ``conv1``.
      out_features: output channels.
      strides: depthwise stride (1 or 2).
      unit: what the backbone's conv units share (:class:`~nm_hebb_jax.models.UnitConfig`).
    """

    expansion: int
    out_features: int
    strides: int = 1
    unit: UnitConfig = UnitConfig()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Maps ``[N, H, W, C_in]`` to ``[N, H / strides, W / strides, out_features]``."""
        in_features = x.shape[-1]
        planes = self.expansion * in_features
        out = ConvBN(planes, 1, name="conv1", unit=self.unit)(x, train)
        out = ConvBN(planes, 3, self.strides, groups=planes, name="conv2", unit=self.unit)(
            out, train
        )
        out = ConvBN(self.out_features, 1, act=None, name="conv3", unit=self.unit)(out, train)
        if self.strides == 1:
            if in_features != self.out_features:
                shortcut = ConvBN(self.out_features, 1, act=None, name="shortcut", unit=self.unit)(
                    x, train
                )
            else:
                shortcut = x.astype(self.unit.dtype)
            out = out + shortcut
        return out


class MobileNetV2(Backbone):
    """CIFAR MobileNetV2 (kuangliu/pytorch-cifar ``models/mobilenetv2.py``).

    Module paths: ``stem``, ``stage{i}_block{j}/{conv1,conv2,conv3,shortcut}`` (stage ``i`` = row
    ``i`` of ``cfg`` from 1, block ``j`` from 0), ``head`` (the 1x1 conv to ``head_features``),
    ``classifier``. Embedding dim: ``head_features`` (1280).

    Call: ``model.apply(variables, x, train=False)`` with ``x`` ``[N, H, W, 3]`` returns
    ``(logits [N, num_classes] float32, {'embedding': [N, D] float32})``.

    Attributes:
      num_classes: classifier outputs.
      hebb_layers: conv units that sow (see ``conv_layer_names()``).
      hebb_activation: 'post' | 'pre' | 'maxpool'.
      dtype: computation dtype.
      cfg: ``(expansion, out_planes, num_blocks, stride)`` rows, :data:`MOBILENET_V2_CFG`.
      stem_features: stem conv width (32).
      head_features: width of the final 1x1 conv (1280); not scaled by ``width_mult``.
      width_mult: when not 1.0, the stem and block widths become
        ``make_divisible(c * width_mult, 8)`` (the MobileNetV2 paper's rule).
    """

    cfg: tuple[tuple[int, int, int, int], ...] = MOBILENET_V2_CFG
    stem_features: int = 32
    head_features: int = 1280
    width_mult: float = 1.0

    default_hebb_layer: ClassVar[str] = "stage2_block0/conv1"
    smoke_overrides: ClassVar[dict] = {
        "cfg": ((1, 8, 1, 1), (2, 16, 2, 1), (2, 16, 1, 2)),
        "stem_features": 8,
        "head_features": 32,
    }

    def _width(self, channels: int) -> int:
        if self.width_mult == 1.0:
            return channels
        return make_divisible(channels * self.width_mult, 8)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        """Classifies ``x`` ``[N, H, W, 3]``; returns ``(logits, {'embedding': ...})``."""
        unit = self.unit()
        x = ConvBN(self._width(self.stem_features), 3, 1, name="stem", unit=unit)(x, train)
        for i, (expansion, out_planes, num_blocks, stride) in enumerate(self.cfg, start=1):
            for j in range(num_blocks):
                x = InvertedResidual(
                    expansion,
                    self._width(out_planes),
                    strides=stride if j == 0 else 1,
                    name=f"stage{i}_block{j}",
                    unit=unit,
                )(x, train)
        x = ConvBN(self.head_features, 1, name="head", unit=unit)(x, train)
        return self.pool_and_classify(x, train)
