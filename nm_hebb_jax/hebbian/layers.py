"""The Hebbian convolutional layer of Miconi 2021 ("Hebbian learning with gradients").

Pure functions over a small pytree per layer (``LayerParams``) and a frozen, hashable
:class:`LayerSpec` (passed as a static argument to ``jax.jit``). One training step of a layer
(:func:`layer_step`):

1. per-sample input normalisation: ``x ← (x − mean) / (std + 1e-10)`` over ``(H, W, C)``;
2. pre-activation ``u = conv(x, w)``, VALID padding, no bias, stride 1;
3. plasticity signal ``y``: k-winners-take-all over channels at each position of ``v = u − θ``
   (``θ`` the adaptive per-channel thresholds); a winner with ``v ≤ 0`` does not fire. Binarised
   (``y ∈ {0, 1}``) by default, graded (``y = v`` at the firing winners) with ``graded=True``;
4. output passed on: the dense "triangle" activation ``ReLU(v − mean_channels(v))`` (Coates et
   al. 2011), or ``y`` itself with ``triangle=False``; then 2×2 average pooling;
5. weight update: ``Δw = −lr · ∂ hebbian_rule_loss(x, w, y) / ∂w`` (one plain-SGD step, no
   momentum; ``optax.sgd``), then the fixed pruning mask, then each filter renormalised to unit
   norm. ``learn=0`` (the warm-up batches) leaves ``w`` unchanged but for mask and norm;
6. homeostasis: ``θ_j ← θ_j + rate · (mean_{b,p} 1[y_j > 0] − K/N)``, so each channel's win rate
   is pushed toward ``K/N``.

Outputs (2)–(4) use the weights and thresholds from before the step, as in the author's code.
Layouts are Flax's: inputs NHWC, kernels HWIO.

Reference: Miconi, "Hebbian learning with gradients: Hebbian convolutional neural networks with
modern deep learning frameworks", arXiv:2107.01729, 2021.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nm_hebb_jax.losses.hebbian_rules import RULES, hebbian_rule_loss

Array = jax.Array
LayerParams = dict[str, Array]  # {'kernel': [kh,kw,Cin,Cout], 'threshold': [Cout], 'mask': same}

_DN = ("NHWC", "HWIO", "NHWC")
_EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Static description of one Hebbian conv layer (hashable: a ``jax.jit`` static argument).

    Attributes:
      features: output channels N.
      kernel_size: square kernel side.
      rule: ``'hebb'``, ``'instar'`` or ``'oja'`` (see :mod:`nm_hebb_jax.losses.hebbian_rules`).
      k_winners: K, winners per position in the k-WTA (``1 <= K <= N``).
      graded: False = binarised plasticity signal (then Oja's update equals instar's).
      triangle: True = pass on the dense triangle activation; False = pass on ``y``.
      lr: per-step SGD learning rate of the loss summed over batch and positions.
      homeostasis_rate: threshold adaptation rate.
      pool: average-pooling window and stride.
    """

    features: int
    kernel_size: int
    rule: str = "instar"
    k_winners: int = 1
    graded: bool = False
    triangle: bool = True
    lr: float = 1e-4
    homeostasis_rate: float = 3.0
    pool: int = 2

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule={self.rule!r} must be one of {RULES}")
        if self.features < 1 or self.kernel_size < 1 or self.pool < 1:
            raise ValueError(
                f"features={self.features}, kernel_size={self.kernel_size} and pool={self.pool} "
                "must all be >= 1"
            )
        if not 1 <= self.k_winners <= self.features:
            raise ValueError(f"k_winners={self.k_winners} must be in [1, {self.features}]")
        if self.lr < 0 or self.homeostasis_rate < 0:
            raise ValueError(
                f"lr={self.lr} and homeostasis_rate={self.homeostasis_rate} must be >= 0"
            )

    @property
    def target_rate(self) -> float:
        """The win rate K/N the homeostasis aims at."""
        return self.k_winners / self.features


def unit_norm(kernel: Array) -> Array:
    """Each filter (output channel) scaled to unit L2 norm over ``(kh, kw, C_in)``.

    Args:
      kernel: ``[kh, kw, C_in, C_out]``.

    Returns:
      Same shape; ``kernel / (‖kernel_j‖ + 1e-10)`` per output channel ``j``.
    """
    norm = jnp.sqrt(jnp.sum(jnp.square(kernel), axis=(0, 1, 2), keepdims=True))
    return kernel / (norm + _EPS)


def pruning_mask(key: Array, shape: tuple[int, int, int, int], prune_prob: float) -> Array:
    """A fixed random 0/1 mask pruning each weight with probability ``prune_prob``.

    Every filter keeps at least one connection (its weight with the largest uniform draw), so
    no filter is all-zero and the unit-norm renormalisation stays defined.

    Args:
      key: PRNG key.
      shape: ``(kh, kw, C_in, C_out)``.
      prune_prob: probability in ``[0, 1)`` that a weight is removed.

    Returns:
      float32 mask of ``shape``.
    """
    if not 0.0 <= prune_prob < 1.0:
        raise ValueError(f"prune_prob={prune_prob} must be in [0, 1)")
    u = jax.random.uniform(key, shape)
    keep = u >= prune_prob
    flat = u.reshape(-1, shape[-1])
    best = jnp.argmax(flat, axis=0)
    forced = jnp.zeros_like(flat, dtype=bool).at[best, jnp.arange(shape[-1])].set(True)
    return (keep | forced.reshape(shape)).astype(jnp.float32)


def init_layer(key: Array, spec: LayerSpec, in_channels: int, *, prune_prob: float = 0.0):
    """Initial parameters: ``w ~ N(0, 0.01²)``, masked, renormalised to unit norm; ``θ = 0``.

    Args:
      key: PRNG key.
      spec: the layer.
      in_channels: C_in.
      prune_prob: pruning probability of the fixed mask (0 = dense).

    Returns:
      ``{'kernel', 'threshold', 'mask'}`` with shapes ``[k, k, C_in, N]``, ``[N]``, ``[k, k,
      C_in, N]``.
    """
    k_w, k_m = jax.random.split(key)
    shape = (spec.kernel_size, spec.kernel_size, int(in_channels), spec.features)
    mask = pruning_mask(k_m, shape, prune_prob) if prune_prob > 0 else jnp.ones(shape)
    kernel = 0.01 * jax.random.normal(k_w, shape) * mask
    return {
        "kernel": unit_norm(kernel),
        "threshold": jnp.zeros((spec.features,), jnp.float32),
        "mask": mask,
    }


def normalize_per_sample(x: Array) -> Array:
    """``(x − mean) / (std + 1e-10)`` per sample over ``(H, W, C)``; ``x`` is ``[B, H, W, C]``."""
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) / (std + _EPS)


def plasticity_signal(v: Array, *, k_winners: int, graded: bool) -> Array:
    """k-WTA across channels at each position; winners with ``v <= 0`` do not fire.

    Args:
      v: thresholded pre-activations ``u − θ``, ``[B, H, W, N]``.
      k_winners: K.
      graded: False: ``y ∈ {0, 1}``; True: ``y = v`` at the firing winners.

    Returns:
      ``y``, ``[B, H, W, N]`` float32 (ties at the K-th value may let more than K fire).
    """
    kth = jax.lax.top_k(v, k_winners)[0][..., -1:]
    fire = (v >= kth) & (v > 0)
    return jnp.where(fire, v, 0.0) if graded else fire.astype(v.dtype)


def triangle_activation(v: Array) -> Array:
    """Coates' triangle activation ``ReLU(v − mean_channels(v))``; ``v`` is ``[B, H, W, N]``."""
    return jax.nn.relu(v - jnp.mean(v, axis=-1, keepdims=True))


def avg_pool(x: Array, window: int) -> Array:
    """Non-overlapping ``window × window`` average pooling of ``[B, H, W, C]`` (VALID)."""
    if window == 1:
        return x
    dims = (1, window, window, 1)
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, dims, "VALID") / (window * window)


def layer_forward(spec: LayerSpec, params: LayerParams, x: Array) -> dict[str, Array]:
    """Forward pass of one layer (no learning).

    Args:
      spec: the layer.
      params: ``{'kernel', 'threshold', 'mask'}``.
      x: layer input ``[B, H, W, C_in]`` (normalised here per sample).

    Returns:
      ``{'x': normalised input [B,H,W,C_in], 'u': pre-activation [B,H',W',N], 'y': plasticity
      signal [B,H',W',N], 'out': pooled output passed on [B,H'//p,W'//p,N]}`` with
      ``H' = H − k + 1``.
    """
    xn = normalize_per_sample(jax.lax.stop_gradient(x))
    u = jax.lax.conv_general_dilated(xn, params["kernel"], (1, 1), "VALID", dimension_numbers=_DN)
    v = u - params["threshold"]
    y = plasticity_signal(v, k_winners=spec.k_winners, graded=spec.graded)
    out = triangle_activation(v) if spec.triangle else y
    return {"x": xn, "u": u, "y": y, "out": avg_pool(out, spec.pool)}


def layer_step(
    spec: LayerSpec, params: LayerParams, x: Array, learn: Array | float = 1.0
) -> tuple[LayerParams, Array, dict[str, Array]]:
    """One training step of a layer: forward, Hebbian SGD update, mask, unit norm, homeostasis.

    The update is ``optax.sgd(spec.lr)`` applied to ``jax.grad(hebbian_rule_loss)`` at the
    normalised (detached) input, so ``Δw = −lr · ∂L/∂w = lr · hebbian_update(x, w, y)``.

    Args:
      spec: the layer.
      params: ``{'kernel', 'threshold', 'mask'}``.
      x: layer input ``[B, H, W, C_in]``.
      learn: traced scalar in ``{0, 1}`` multiplying the weight update (0 during warm-up).

    Returns:
      ``(new_params, out, metrics)``: ``out`` is the pooled output of the pre-update layer
      ``[B, H'//p, W'//p, N]``; ``metrics`` holds ``delta`` (the masked weight change before
      renormalisation, ``[k,k,C_in,N]``), ``win_rate`` ``[N]``, ``update_norm`` and
      ``win_rate_spread`` (std of the win rates) scalars.
    """
    fwd = layer_forward(spec, params, x)
    xn, y = jax.lax.stop_gradient(fwd["x"]), jax.lax.stop_gradient(fwd["y"])
    kernel, mask = params["kernel"], params["mask"]
    grad = jax.grad(hebbian_rule_loss, argnums=1)(xn, kernel, y, rule=spec.rule)
    opt = optax.sgd(spec.lr)  # plain SGD, no momentum: its state is empty
    updates, _ = opt.update(grad, opt.init(kernel), kernel)
    delta = learn * updates * mask
    new_kernel = unit_norm((kernel + delta) * mask)
    win_rate = jnp.mean((y > 0).astype(jnp.float32), axis=(0, 1, 2))
    threshold = params["threshold"] + spec.homeostasis_rate * (win_rate - spec.target_rate)
    new_params = {"kernel": new_kernel, "threshold": threshold, "mask": mask}
    metrics = {
        "delta": delta,
        "win_rate": win_rate,
        "update_norm": jnp.sqrt(jnp.sum(jnp.square(delta))),
        "win_rate_spread": jnp.std(win_rate),
    }
    return new_params, fwd["out"], metrics


def param_count(params: LayerParams) -> dict[str, Any]:
    """Number of weights and of unpruned weights of a layer (for logs and reports)."""
    return {
        "weights": int(params["kernel"].size),
        "connected": int(jnp.sum(params["mask"])),
    }
