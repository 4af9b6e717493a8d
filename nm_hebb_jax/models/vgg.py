"""CIFAR VGG-11 with BatchNorm (Simonyan & Zisserman, arXiv 1409.1556; BN: Ioffe & Szegedy 2015).

Reference: kuangliu/pytorch-cifar ``models/vgg.py``, ``VGG('VGG11')``: cfg
``[64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M']`` of 3x3 conv-BN-ReLU layers and
2x2 max-pools, then ``Linear(512, num_classes)``.

Deviation: the reference convs have ``bias=True``; a bias right before BatchNorm is cancelled by
the batch mean (train) and absorbed by the running mean (eval), so it is dropped by default
(``conv_bias=False``: 9,228,362 parameters instead of 9,231,114 for 10 classes, -0.03%).
``conv_bias=True`` restores the reference count exactly. The classifier reads the globally
average-pooled map (identical to the reference's flatten at 32x32, where the map is 1x1, and
what makes 64x64 inputs work).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn

from nm_hebb_jax.models.layers import Array, Backbone, ConvBN

#: kuangliu/pytorch-cifar ``cfg['VGG11']``: conv widths, ``'M'`` = 2x2 max-pool.
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(Backbone):
    """VGG with BatchNorm for CIFAR (kuangliu/pytorch-cifar ``models/vgg.py``).

    Module paths: convs are ``stage{i}_conv{j}``, where stage ``i`` (from 1) counts the max-pools
    passed so far and ``j`` (from 0) is the conv's index inside its stage; then ``classifier``.
    Every conv is 3x3 -> BN -> ReLU, so 'post' = after BN + ReLU for all of them.
    Embedding dim: the last conv width (512 for VGG-11).

    Call: ``model.apply(variables, x, train=False)`` with ``x`` ``[N, H, W, 3]`` returns
    ``(logits [N, num_classes] float32, {'embedding': [N, D] float32})``.

    Attributes:
      num_classes: classifier outputs.
      hebb_layers: conv units that sow (see ``conv_layer_names()``).
      hebb_activation: 'post' | 'pre' | 'maxpool'.
      dtype: computation dtype.
      cfg: conv widths and ``'M'`` max-pools, :data:`VGG11_CFG` by default.
      conv_bias: give the convs a bias as the reference does (redundant before BN).
    """

    cfg: tuple[int | str, ...] = VGG11_CFG
    conv_bias: bool = False

    default_hebb_layer: ClassVar[str] = "stage2_conv0"
    smoke_overrides: ClassVar[dict] = {"cfg": (8, "M", 16, "M")}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        """Classifies ``x`` ``[N, H, W, 3]``; returns ``(logits, {'embedding': ...})``."""
        unit = self.unit()
        stage, index = 1, 0
        for item in self.cfg:
            if item == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
                stage, index = stage + 1, 0
            else:
                x = ConvBN(
                    int(item),
                    3,
                    1,
                    use_bias=self.conv_bias,
                    name=f"stage{stage}_conv{index}",
                    unit=unit,
                )(x, train)
                index += 1
        return self.pool_and_classify(x, train)
