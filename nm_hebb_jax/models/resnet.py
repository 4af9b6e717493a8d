"""CIFAR ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385).

Reference: kuangliu/pytorch-cifar ``models/resnet.py``, ``ResNet(BasicBlock, [2, 2, 2, 2])``: a 3x3
stride-1 stem conv to 64 channels with BN-ReLU and no max-pool, four stages of BasicBlocks with
widths 64, 128, 256, 512 (stride 2 from the second stage on), a 1x1 conv + BN shortcut where the
shape changes, global average pooling and a Linear classifier. 11,173,962 parameters for 10
classes, matched exactly.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn

from nm_hebb_jax.models.layers import Array, Backbone, ConvBN, UnitConfig


class BasicBlock(nn.Module):
    """``conv1`` (3x3, stride, BN, ReLU) -> ``conv2`` (3x3, BN) + shortcut -> ReLU.

    Tap semantics: ``conv1`` 'post' = after BN + ReLU. ``conv2`` and ``shortcut`` have no
    activation of their own (the block's ReLU acts on the residual sum), so their 'post' is the
    BN output.

    Attributes:
      features: output channels.
      strides: stride of ``conv1`` and of the shortcut.
      unit: what the backbone's conv units share (:class:`~nm_hebb_jax.models.UnitConfig`).
    """

    features: int
    strides: int = 1
    unit: UnitConfig = UnitConfig()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Maps ``[N, H, W, C_in]`` to ``[N, H / strides, W / strides, features]``."""
        out = ConvBN(self.features, 3, self.strides, name="conv1", unit=self.unit)(x, train)
        out = ConvBN(self.features, 3, 1, act=None, name="conv2", unit=self.unit)(out, train)
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = ConvBN(
                self.features, 1, self.strides, act=None, name="shortcut", unit=self.unit
            )(x, train)
        else:
            shortcut = x.astype(self.unit.dtype)
        return nn.relu(out + shortcut)


class ResNet(Backbone):
    """CIFAR ResNet with BasicBlocks (kuangliu/pytorch-cifar ``models/resnet.py``).

    Module paths: ``stem``, ``stage{i}_block{j}/{conv1,conv2,shortcut}`` (stages from 1, blocks
    from 0), ``classifier``. Stage ``i`` has width ``width * 2**(i-1)`` and stride 2 for ``i > 1``.
    Embedding dim: ``width * 2**(len(stage_sizes) - 1)`` (512 for ResNet-18).

    Call: ``model.apply(variables, x, train=False)`` with ``x`` ``[N, H, W, 3]`` returns
    ``(logits [N, num_classes] float32, {'embedding': [N, D] float32})``.

    Attributes:
      num_classes: classifier outputs.
      hebb_layers: conv units that sow (see ``conv_layer_names()``).
      hebb_activation: 'post' | 'pre' | 'maxpool'.
      dtype: computation dtype.
      stage_sizes: BasicBlocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
      width: channels of the stem and the first stage (64 in the reference).
    """

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    width: int = 64

    default_hebb_layer: ClassVar[str] = "stage2_block0/conv1"
    smoke_overrides: ClassVar[dict] = {"stage_sizes": (1, 1, 1, 1), "width": 4}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        """Classifies ``x`` ``[N, H, W, 3]``; returns ``(logits, {'embedding': ...})``."""
        unit = self.unit()
        x = ConvBN(self.width, 3, 1, name="stem", unit=unit)(x, train)
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = BasicBlock(
                    self.width * 2**i,
                    strides=2 if (i > 0 and j == 0) else 1,
                    name=f"stage{i + 1}_block{j}",
                    unit=unit,
                )(x, train)
        return self.pool_and_classify(x, train)
