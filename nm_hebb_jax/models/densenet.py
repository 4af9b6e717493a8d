"""CIFAR DenseNet-121 (Huang et al., "Densely Connected Convolutional Networks", arXiv 1608.06993).

Reference: kuangliu/pytorch-cifar ``models/densenet.py``, ``DenseNet121()`` =
``DenseNet(Bottleneck, [6, 12, 24, 16], growth_rate=32)``, reduction 0.5: a 3x3 stem conv to
``2 * growth`` channels (no BN after it), dense blocks of pre-activation bottlenecks
``BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k)`` whose output is concatenated in front of the input,
transitions ``BN-ReLU-conv1x1-avgpool2``, and a final ``BN-ReLU-avgpool-Linear``. 6,956,298
parameters for 10 classes, matched exactly. Pooling before the classifier is global (the
reference's ``avg_pool2d(out, 4)`` at 32x32).

Tap semantics of this pre-activation network (declared interpretation): the bottleneck's 1x1
``conv1`` is written as one unit conv1 -> bn2 -> ReLU (the BN + ReLU the architecture applies to
exactly that conv's output; computation identical to PyTorch), so its 'post' is after that BN +
ReLU. Convs whose output is concatenated or pooled without a BN of their own (the stem, the
bottleneck's 3x3 ``conv2``, the transition ``conv``) have 'post' = 'pre' = raw conv output.
Default tap: ``stage2_block0/conv1``, the first conv of the second dense block, which has a real
'post' activation.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from nm_hebb_jax.models.layers import Array, Backbone, ConvBN, UnitConfig, batch_norm


class DenseBottleneck(nn.Module):
    """pytorch-cifar ``Bottleneck``: ``bn1``-ReLU -> ``conv1`` (1x1, BN, ReLU) -> ``conv2`` (3x3).

    Output ``concat([conv2_out, x])`` (new features first, as in the reference).

    Attributes:
      growth_rate: channels added (k); ``conv1`` has ``4 * k``.
      unit: what the backbone's conv units share (:class:`~nm_hebb_jax.models.UnitConfig`).
    """

    growth_rate: int
    unit: UnitConfig = UnitConfig()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Maps ``[N, H, W, C]`` to ``[N, H, W, C + growth_rate]``."""
        x = x.astype(self.unit.dtype)
        out = nn.relu(batch_norm(train=train, epsilon=1e-5, dtype=self.unit.dtype, name="bn1")(x))
        out = ConvBN(4 * self.growth_rate, 1, name="conv1", unit=self.unit)(out, train)
        out = ConvBN(self.growth_rate, 3, use_norm=False, act=None, name="conv2", unit=self.unit)(
            out, train
        )
        return jnp.concatenate([out, x], axis=-1)


class Transition(nn.Module):
    """pytorch-cifar ``Transition``: ``bn``-ReLU -> ``conv`` (1x1, raw) -> 2x2 average pool.

    Attributes:
      features: output channels.
      unit: what the backbone's conv units share (:class:`~nm_hebb_jax.models.UnitConfig`).
    """

    features: int
    unit: UnitConfig = UnitConfig()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Maps ``[N, H, W, C]`` to ``[N, H // 2, W // 2, features]``."""
        out = nn.relu(batch_norm(train=train, epsilon=1e-5, dtype=self.unit.dtype, name="bn")(x))
        out = ConvBN(
            self.features,
            1,
            use_norm=False,
            act=None,
            name="conv",
            unit=self.unit,
        )(out, train)
        return nn.avg_pool(out, (2, 2), strides=(2, 2), padding="VALID")


class DenseNet(Backbone):
    """CIFAR DenseNet-BC (kuangliu/pytorch-cifar ``models/densenet.py``), DenseNet-121 by default.

    Module paths: ``stem``, ``stage{i}_block{j}/{conv1,conv2}`` (dense block ``i`` from 1,
    bottleneck ``j`` from 0), ``transition{i}/conv`` (after dense block ``i``), ``final_bn``,
    ``classifier``. Embedding dim: channels after the last dense block (1024 for DenseNet-121).

    Call: ``model.apply(variables, x, train=False)`` with ``x`` ``[N, H, W, 3]`` returns
    ``(logits [N, num_classes] float32, {'embedding': [N, D] float32})``.

    Attributes:
      num_classes: classifier outputs.
      hebb_layers: conv units that sow (see ``conv_layer_names()``).
      hebb_activation: 'post' | 'pre' | 'maxpool'.
      dtype: computation dtype.
      block_sizes: bottlenecks per dense block, ``(6, 12, 24, 16)``.
      growth_rate: k (32).
      reduction: transition compression, ``floor(C * reduction)`` channels out (0.5).
      init_features: stem width; ``None`` = ``2 * growth_rate`` as in the reference.
    """

    block_sizes: tuple[int, ...] = (6, 12, 24, 16)
    growth_rate: int = 32
    reduction: float = 0.5
    init_features: int | None = None

    default_hebb_layer: ClassVar[str] = "stage2_block0/conv1"
    smoke_overrides: ClassVar[dict] = {"block_sizes": (1, 1), "growth_rate": 4}

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        """Classifies ``x`` ``[N, H, W, 3]``; returns ``(logits, {'embedding': ...})``."""
        unit = self.unit()
        stem = 2 * self.growth_rate if self.init_features is None else self.init_features
        x = ConvBN(stem, 3, use_norm=False, act=None, name="stem", unit=unit)(x, train)
        for i, num_blocks in enumerate(self.block_sizes, start=1):
            for j in range(num_blocks):
                x = DenseBottleneck(self.growth_rate, name=f"stage{i}_block{j}", unit=unit)(
                    x, train
                )
            if i < len(self.block_sizes):
                features = int(math.floor(x.shape[-1] * self.reduction))
                x = Transition(features, name=f"transition{i}", unit=unit)(x, train)
        x = nn.relu(batch_norm(train=train, epsilon=1e-5, dtype=self.dtype, name="final_bn")(x))
        return self.pool_and_classify(x, train)
