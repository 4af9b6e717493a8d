"""The 3-layer Hebbian CNN of Miconi 2021 ("Hebbian learning with gradients"), config-driven.

Default (the author's configuration): 32×32×3 ZCA-whitened input → conv 5×5→100 → pool 2 (14×14)
→ conv 3×3→196 → pool 2 (6×6) → conv 3×3→400 → pool 2 (2×2); no padding, no bias; pruning masks
(probability ``prune_prob``) on the connections into layers 2 and 3; each layer learns locally
(:func:`nm_hebb_jax.hebbian.layers.layer_step`) from its detached input.

Reference: Miconi, arXiv:2107.01729, 2021.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from nm_hebb_jax.hebbian import layers

Array = jax.Array
Params = list[layers.LayerParams]


@dataclasses.dataclass(frozen=True)
class HebbianCNN:
    """A stack of Hebbian conv layers.

    Attributes:
      specs: one :class:`~nm_hebb_jax.hebbian.layers.LayerSpec` per layer.
      prune_probs: pruning probability per layer (the first layer is never pruned by
        :func:`from_config`).
    """

    specs: tuple[layers.LayerSpec, ...]
    prune_probs: tuple[float, ...]

    def output_shapes(self, image_shape: Sequence[int]) -> list[tuple[int, int, int]]:
        """``(H, W, C)`` of each layer's pooled output for an input of ``image_shape``.

        Raises:
          ValueError: when a layer's input is smaller than its kernel or pooling window.
        """
        h, w, _ = (int(s) for s in image_shape)
        shapes = []
        for i, spec in enumerate(self.specs):
            h, w = h - spec.kernel_size + 1, w - spec.kernel_size + 1
            if h < spec.pool or w < spec.pool:
                raise ValueError(
                    f"layer {i + 1} (kernel {spec.kernel_size}, pool {spec.pool}) gets a "
                    f"{h + spec.kernel_size - 1}x{w + spec.kernel_size - 1} input: too small; "
                    "use fewer layers, smaller kernels or larger images"
                )
            h, w = h // spec.pool, w // spec.pool
            shapes.append((h, w, spec.features))
        return shapes

    def init(self, key: Array, image_shape: Sequence[int]) -> Params:
        """Initial parameters of every layer (see :func:`layers.init_layer`)."""
        self.output_shapes(image_shape)
        in_channels = int(image_shape[-1])
        params = []
        for spec, p, k in zip(
            self.specs, self.prune_probs, jax.random.split(key, len(self.specs)), strict=True
        ):
            params.append(layers.init_layer(k, spec, in_channels, prune_prob=p))
            in_channels = spec.features
        return params

    @functools.cached_property
    def layer_steps(self):
        """One ``jax.jit``-compiled :func:`layers.layer_step` per layer: ``(params, x, learn)``."""
        return tuple(jax.jit(functools.partial(layers.layer_step, s)) for s in self.specs)

    def train_step(self, params: Params, x: Array, learn: Array) -> tuple[Params, dict]:
        """Trains every layer once on a batch, layer by layer, with detached inputs.

        Args:
          params: per-layer parameters.
          x: whitened images ``[B, H, W, C]``.
          learn: scalar 0/1 (0 during the warm-up batches: thresholds only).

        Returns:
          ``(new_params, metrics)`` with scalar metrics ``layer{i}/update_norm`` and
          ``layer{i}/win_rate_spread`` (1-based ``i``).
        """
        new, metrics = [], {}
        for i, (step, p) in enumerate(zip(self.layer_steps, params, strict=True)):
            p, x, m = step(p, jax.lax.stop_gradient(x), learn)
            new.append(p)
            metrics[f"layer{i + 1}/update_norm"] = m["update_norm"]
            metrics[f"layer{i + 1}/win_rate_spread"] = m["win_rate_spread"]
        return new, metrics

    def features(self, params: Params, x: Array) -> list[Array]:
        """Frozen forward pass: each layer's pooled output ``[B, H_l, W_l, N_l]`` (no learning)."""
        outs = []
        for spec, p in zip(self.specs, params, strict=True):
            x = layers.layer_forward(spec, p, x)["out"]
            outs.append(x)
        return outs


def from_config(config) -> HebbianCNN:
    """Builds the model from a ``configs/hebbian_cnn.py`` config (one-line error on bad values)."""
    channels = tuple(int(c) for c in config.channels)
    kernels = tuple(int(k) for k in config.kernel_sizes)
    lrs = tuple(float(v) for v in config.lrs)
    if not (len(channels) == len(kernels) == len(lrs)) or not channels:
        raise ValueError(
            f"channels {channels}, kernel_sizes {kernels} and lrs {lrs} must be non-empty and of "
            "equal length (one entry per layer)"
        )
    if not 0.0 <= float(config.prune_prob) < 1.0:
        raise ValueError(f"prune_prob={config.prune_prob} must be in [0, 1)")
    specs = tuple(
        layers.LayerSpec(
            features=c,
            kernel_size=k,
            rule=str(config.rule),
            k_winners=int(config.k_winners),
            graded=bool(config.graded),
            triangle=bool(config.triangle),
            lr=lr,
            homeostasis_rate=float(config.homeostasis_rate),
            pool=int(config.pool),
        )
        for c, k, lr in zip(channels, kernels, lrs, strict=True)
    )
    probs = (0.0,) + (float(config.prune_prob),) * (len(specs) - 1)
    return HebbianCNN(specs=specs, prune_probs=probs)


def quadrant_pool(x: Array) -> Array:
    """Averages a feature map over its 4 spatial quadrants (the paper's per-layer readout).

    Quadrant ``(i, j)`` spans rows ``[i·⌊H/2⌋, …)`` as in the author's code for even sizes; for an
    odd size the middle row/column is shared by both halves, and a size-1 map is its own quadrant.

    Args:
      x: ``[B, H, W, C]``.

    Returns:
      ``[B, 4·C]``, ordered (quadrant, channel).
    """
    h, w = x.shape[1], x.shape[2]
    rows = [(0, max(1, -(-h // 2))), (h // 2, h)]
    cols = [(0, max(1, -(-w // 2))), (w // 2, w)]
    quads = [jnp.mean(x[:, r0:r1, c0:c1, :], axis=(1, 2)) for r0, r1 in rows for c0, c1 in cols]
    return jnp.concatenate(quads, axis=-1)
