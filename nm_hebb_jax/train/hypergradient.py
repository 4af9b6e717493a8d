"""How the neuromodulator φ learns by its one-step hypergradient (docs/method.md, "How φ learns").

With a plain-SGD step θ_{t+1} = θ_t − η_t (g_CE,t + ν_t g_R,t + …), where g_R is the gradient of
the *ungated* sum of the gated terms (λ_hebb R_Hebb + λ_ewc R_EWC), the next batch's loss moves
with the gate as

    dL_CE,t+1 / dν_t = −η_t ⟨g_CE,t+1, g_R,t⟩                                   (h, exact)

with η_t the rate of the step that *used* ν_t (stored here with g_R,t, so a moving schedule,
warm-up included, gives the right value). The train step keeps g_R,t, s_t and η_t in a
parameter-sized buffer (``state.hyper``) at a storing step and, at the next step (where
g_CE,t+1 = g_total,t+1 − ν_{t+1} g_R,t+1 is at hand), forms h and updates φ:

    h̃ = h / sqrt(EMA(h²))             (``nm.hyper_normalize``: scale-free; else h̃ = h)
    g_φ = h̃ ∂ν_t/∂φ + λ_gate ∂KL(Bern(ν) ‖ Bern(target))/∂φ
    φ ← φ + optimiser(g_φ)            (``nm.phi_optimizer``: 'adam' or 'sgd', rate ``nm.lr``)

Why scale-free [ours, declared]: on real data h is 1e-8–1e-5 (it carries η_t and two gradient
norms), so a plain-SGD step on it leaves ν where it started; normalising by the running RMS
of h keeps its sign and its size relative to recent steps, and makes λ_gate a weight relative to a
unit-scale hypergradient. With momentum in the main optimiser h is the usual one-step
approximation (Baydin et al. 2018).

Cost: computing g_R separately every step would need a backward pass through the layers up to
the tap, so the buffer is filled and used every ``nm.hyper_every`` = k steps: phase-local step
``t`` with ``t % k == k − 1`` stores g_R,t, step ``t + 1`` (``% k == 0``) applies. Each runs in
its own compiled variant of the train step (:func:`hyper_variant`): on XLA:CPU, g_R inside a
``lax.cond`` branch runs far slower than at the top level of a jitted step (BENCHMARKS.md).
``nm.hyper_g_r``:
``'recompute'`` computes g_R,t+1 on the applying step too (exact); ``'reuse'`` takes the stored
g_R,t as its estimate (one g_R pass per k steps).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from nm_hebb_jax import losses

PyTree = Any
Array = jax.Array

#: Valid values of ``nm.hyper_g_r``.
HYPER_G_R_MODES: tuple[str, ...] = ("recompute", "reuse")
#: Valid values of ``nm.phi_optimizer``.
PHI_OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
#: Reference losses at which the learned gate ν(L) is logged (``nm/gate_at_ce=<L>``): the gate
#: as a function, independent of the loss the run happens to be at.
GATE_REFERENCE_LOSSES: tuple[float, ...] = (0.1, 0.5, 2.3)


def make_phi_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """φ's optimiser: ``'adam'`` (``optax.adam``) or ``'sgd'`` (plain, no momentum)."""
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    raise ValueError(f"nm.phi_optimizer={name!r} is not supported; use one of {PHI_OPTIMIZERS}")


def init_hyper(params: PyTree, phi_tx: optax.GradientTransformation) -> dict:
    """Empty hypergradient buffers of ``params = {'backbone', 'neuromod', ...}``.

    Keys: ``g_r`` (g_R,t, backbone-shaped), ``s`` (the gate input s_t), ``lr`` (η_t),
    ``valid`` (a stored g_R,t exists), ``h_sq`` and ``count`` (EMA of h² and the number of
    φ updates, for the scale-free step), ``phi_opt`` (φ's optimiser state).
    """
    return {
        "g_r": jax.tree.map(jnp.zeros_like, params["backbone"]),
        "s": jnp.zeros((), jnp.float32),
        "lr": jnp.zeros((), jnp.float32),
        "valid": jnp.zeros((), jnp.bool_),
        "h_sq": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
        "phi_opt": phi_tx.init(params["neuromod"]),
    }


def uses_hyper_step(t: int, hyper_every: int) -> bool:
    """Whether phase-local step ``t`` runs a hypergradient variant of the train step."""
    k = max(int(hyper_every), 1)
    return t % k in (0, k - 1)


def hyper_variant(t: int, hyper_every: int, g_r_mode: str = "recompute") -> bool | str:
    """The ``hyper_step`` variant phase-local step ``t`` runs (``False`` = the plain step).

    ``'recompute'``: ``True`` (exact variant) on both hypergradient steps. ``'reuse'``: ``'store'``
    at ``t % k == k − 1`` and ``'apply'`` at ``t % k == 0``; with ``k = 1`` every step needs g_R
    anyway, so it is the exact variant.
    """
    if g_r_mode not in HYPER_G_R_MODES:
        raise ValueError(
            f"nm.hyper_g_r={g_r_mode!r} is not supported; use one of {HYPER_G_R_MODES}"
        )
    k = max(int(hyper_every), 1)
    if not uses_hyper_step(t, k):
        return False
    if g_r_mode == "recompute" or k == 1:
        return True
    return "store" if t % k == k - 1 else "apply"


#: The compiled variant of each ``hyper_step`` value, by name (``Trainer.compiled`` keys).
STEP_VARIANT_NAMES: dict[bool | str, str] = {
    True: "hyper",
    "store": "hyper_store",
    "apply": "hyper_apply",
}


def step_variants(hyper_every: int, g_r_mode: str = "recompute") -> tuple[bool | str, ...]:
    """The hypergradient variants a phase runs besides the plain step (each compiled once)."""
    k = max(int(hyper_every), 1)
    used = {hyper_variant(t, k, g_r_mode) for t in range(k)} - {False}
    return tuple(sorted(used, key=str))


def gate_reference_metrics(neuromod, phi: PyTree) -> dict[str, Array]:
    """ν at the :data:`GATE_REFERENCE_LOSSES` (``{'nm/gate_at_ce=0.1': ν(log1p 0.1), ...}``)."""
    s = jnp.log1p(jnp.asarray(GATE_REFERENCE_LOSSES, jnp.float32))
    nu = neuromod.apply({"params": phi}, s)
    return {f"nm/gate_at_ce={v:g}": nu[i] for i, v in enumerate(GATE_REFERENCE_LOSSES)}


def hyper_update(
    buf: dict,
    phi: PyTree,
    *,
    g_total: PyTree,
    g_r_now: PyTree,
    gate: Array,
    gate_input: Array,
    lr: Array,
    t: Array,
    hyper_every: int,
    applies: bool,
    stores: bool,
    neuromod,
    phi_tx: optax.GradientTransformation,
    normalize: bool,
    norm_decay: float,
    prior_weight: float,
    prior_target: float,
) -> tuple[PyTree, dict, dict]:
    """One hypergradient step's work on φ and the buffer (called inside the jitted train step).

    Args:
      buf: the buffer of :func:`init_hyper` before this step.
      phi: ``params['neuromod']`` before this step.
      g_total: backbone gradient of the whole phase-1 loss at this step.
      g_r_now: g_R at this step (exact) or the stored g_R of the previous step (``'apply'``).
      gate: ν at this step; ``gate_input``: s at this step.
      lr: the main optimiser's rate at this step (η_t; stored with g_R).
      t: phase-local step.
      hyper_every: k.
      applies: this variant may apply a φ update (on ``t % k == 0`` with a valid buffer).
      stores: this variant computed g_R and stores it (on ``t % k == k − 1``).
      neuromod: the :class:`~nm_hebb_jax.neuromod.Neuromodulator` module.
      phi_tx: φ's optimiser (:func:`make_phi_optimizer`).
      normalize: divide h by the square root of its bias-corrected EMA of h².
      norm_decay: that EMA's decay.
      prior_weight, prior_target: λ_gate and the target of the KL prior on ν.

    Returns:
      ``(new_phi, new_buf, metrics)``; metrics ``hypergrad`` (h), ``hypergrad_scaled`` (h̃),
      ``hyper_applied`` (0/1).
    """
    k = max(int(hyper_every), 1)
    g_ce = jax.tree.map(lambda g, r: g - gate * r, g_total, g_r_now)
    do_h = (t % k == 0) & buf["valid"] & applies
    h = jnp.where(do_h, losses.gate_hypergradient(g_ce, buf["g_r"], learning_rate=buf["lr"]), 0.0)
    count = buf["count"] + do_h.astype(jnp.int32)
    h_sq = jnp.where(do_h, norm_decay * buf["h_sq"] + (1.0 - norm_decay) * h * h, buf["h_sq"])
    if normalize:
        debias = 1.0 - jnp.power(jnp.float32(norm_decay), jnp.maximum(count, 1))
        h_scaled = jnp.where(do_h, h * jax.lax.rsqrt(h_sq / debias + 1e-30), 0.0)
    else:
        h_scaled = h

    def nu(p, s):
        return neuromod.apply({"params": p}, s)

    dnu = jax.grad(nu)(phi, buf["s"])
    dprior = jax.grad(
        lambda p: prior_weight * losses.gate_prior(nu(p, gate_input), target=prior_target)
    )(phi)
    g_phi = jax.tree.map(lambda a, b: h_scaled * a + b, dnu, dprior)
    updates, opt = phi_tx.update(g_phi, buf["phi_opt"], phi)
    new_phi = jax.tree.map(lambda p, u: jnp.where(do_h, p + u, p), phi, updates)
    opt = jax.tree.map(lambda n, o: jnp.where(do_h, n, o), opt, buf["phi_opt"])
    store = (t % k == k - 1) & stores
    new_buf = {
        "g_r": jax.tree.map(lambda new, old: jnp.where(store, new, old), g_r_now, buf["g_r"]),
        "s": jnp.where(store, gate_input, buf["s"]),
        "lr": jnp.where(store, jnp.asarray(lr, jnp.float32), buf["lr"]),
        "valid": buf["valid"] | store,
        "h_sq": h_sq,
        "count": count,
        "phi_opt": opt,
    }
    metrics = {
        "hypergrad": h,
        "hypergrad_scaled": h_scaled,
        "hyper_applied": do_h.astype(jnp.float32),
    }
    return new_phi, new_buf, metrics


#: The metric keys :func:`hyper_update` adds, with zeros on plain steps (stable keys).
HYPER_METRIC_KEYS: tuple[str, ...] = ("hypergrad", "hypergrad_scaled", "hyper_applied")
