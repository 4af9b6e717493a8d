"""Train and eval step factories (one per phase, each ``jax.jit``-compiled once).

The train step is a pure function ``(state, ewc, batch) -> (state, metrics)``. Everything that
changes over time (learning rate, hypergradient schedule) is computed from ``state.step`` inside
the step, so nothing forces a recompilation.

Neuromodulator learning, ``'hypergradient'`` (METHOD.md A, "how φ learns"): with plain SGD,
dL_CE,t+1/dν_t ≈ −η ⟨g_CE,t+1, g_R,t⟩, where g_R is the gradient of the ungated regulariser sum.
Every ``hyper_every`` steps (phase-local step ``t`` with ``t % k == 0``) the step computes
g_R,t separately (a backward pass up to the tapped layer: XLA drops the layers after it and
merges the pass's forward with the training forward, whose inputs are the same),
g_CE,t = g_total,t − ν_t g_R,t, and the scalar h = −η_t ⟨g_CE,t, g_R,t−1⟩ from the buffer filled at
``t − 1`` (``t % k == k − 1``), then takes φ ← φ − η_φ (h ∂ν_{t−1}/∂φ + λ_gate ∂KL/∂φ). With k = 1
this is exactly the one-step rule; with k > 1 the cost is two g_R passes per k steps.

``hyper_g_r='reuse'`` (config ``nm.hyper_g_r``) halves that: step ``t`` (``t % k == 0``) takes
g_CE,t ≈ g_total,t − ν_t g_R,t−1 from the stored g_R,t−1 instead of computing g_R,t, so only the
storing step ``t − 1`` pays for a g_R pass. The approximation is g_R,t ≈ g_R,t−1 (one SGD step
apart, different batches); ``'recompute'`` is exact. Steps then use three compiled variants:
plain, ``'store'`` (g_R pass, fills the buffer) and ``'apply'`` (φ update from the buffer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nm_hebb_jax import losses
from nm_hebb_jax.objectives import regularizer_grad
from nm_hebb_jax.train.state import TrainState

PyTree = Any


def _flatten_metrics(loss, aux, grads_backbone, lr) -> dict:
    metrics = {"loss": loss, "lr": lr, "grad_norm": optax.tree.norm(grads_backbone)}
    for k, v in aux["terms"].items():
        metrics[f"terms/{k}"] = v
    logits = aux["logits"]
    metrics["top1"] = jnp.mean(jnp.argmax(logits, -1) == aux["labels"])
    if "gate" in aux:
        metrics["gate"] = aux["gate"]
        metrics["gate_input"] = aux["gate_input"]
    return metrics


def make_train_step(
    objective: Callable,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    phase_start: int,
    gate_mode: str | None,
    neuromod=None,
    nm_lr: float = 1.0,
    hyper_every: int = 10,
    prior_weight: float = 1e-3,
    prior_target: float = 0.5,
    skip_nonfinite: bool = False,
    hyper_step: bool | str = False,
) -> Callable[[TrainState, PyTree, dict], tuple[TrainState, dict]]:
    """Returns the (un-jitted) train step of one phase.

    Args:
      objective: ``(params, state, batch, rng) -> (loss, aux)`` of the phase.
      tx: the phase's optimiser (built by ``make_optimizer``).
      schedule: the phase's learning-rate schedule (phase-local step).
      phase_start: global step at which the phase starts.
      gate_mode: ``None`` or the neuromodulator mode; ``'hypergradient'`` enables the φ update.
      neuromod: the ``Neuromodulator`` module (hypergradient mode).
      nm_lr: φ's plain-SGD rate.
      hyper_every: compute the hypergradient every this many steps.
      prior_weight: λ_gate of the KL prior in the φ update.
      prior_target: target of the KL prior.
      skip_nonfinite: if True, an update with a non-finite loss or gradient is skipped.
      hyper_step: which variant to build (:func:`hyper_variant` says which one a step uses):
        ``False`` the plain step; ``True`` or ``'exact'`` computes g_R and both stores it
        (``t % k == k − 1``) and applies the φ update with the exact g_CE (``t % k == 0``);
        ``'store'`` computes and stores g_R only; ``'apply'`` applies the φ update with g_R,t
        estimated by the stored g_R,t−1 (no g_R pass). Separate compiled variants rather than a
        ``lax.cond``: on XLA:CPU g_R inside a conditional branch ran 38x slower than at top level
        (0.971 s vs 0.0255 s, quickstart model; ``experiments/bench/hyper_step_bench.py``).

    Returns:
      ``step(state, ewc, batch) -> (new_state, metrics)``; ``metrics`` is a flat dict of scalars.
    """
    hyper = gate_mode == "hypergradient"
    variant = {False: None, True: "exact"}.get(hyper_step, hyper_step)
    if variant not in (None, "exact", "store", "apply"):
        raise ValueError(
            f"hyper_step={hyper_step!r} is not supported; use False, True, 'store' or 'apply'"
        )
    computes_g_r = variant in ("exact", "store")
    g_r_fn = regularizer_grad(objective) if hyper and computes_g_r else None
    k = max(int(hyper_every), 1)

    def step(state: TrainState, ewc: PyTree, batch: dict):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        obj_state = {"batch_stats": state.batch_stats, "ewc": ewc}
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, obj_state, batch, rng
        )
        t = state.step - phase_start
        lr = schedule(t)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        aux = {**aux, "labels": batch["label"]}
        metrics = _flatten_metrics(loss, aux, grads["backbone"], lr)
        new_hyper = state.hyper
        if hyper and variant is not None:
            params, new_hyper, hmetrics = _hyper_update(
                state, params, grads, aux, obj_state, batch, rng, t, lr
            )
            metrics.update(hmetrics)
        elif hyper:  # same metric keys in both variants
            metrics.update({"hypergrad": jnp.zeros(()), "hyper_applied": jnp.zeros(())})
        finite = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
        metrics["finite"] = finite
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=aux["batch_stats"],
            opt_state=opt_state,
            hyper=new_hyper,
        )
        if skip_nonfinite:
            keep = state.replace(step=state.step + 1)
            new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, keep)
        return new_state, metrics

    def _hyper_update(state, params, grads, aux, obj_state, batch, rng, t, lr):
        buf = state.hyper
        if g_r_fn is not None:
            g_r = g_r_fn(state.params, obj_state, batch, rng)["backbone"]
        else:  # 'apply': g_R,t estimated by the stored g_R,t-1
            g_r = buf["g_r"]
        gate = aux["gate"]
        g_ce = jax.tree.map(lambda g, r: g - gate * r, grads["backbone"], g_r)
        do_h = (t % k == 0) & buf["valid"] & (variant != "store")
        h = jnp.where(do_h, losses.gate_hypergradient(g_ce, buf["g_r"], learning_rate=lr), 0.0)
        phi = state.params["neuromod"]

        def nu(p, s):
            return neuromod.apply({"params": p}, s)

        dnu = jax.grad(nu)(phi, buf["s"])
        dprior = jax.grad(
            lambda p: (
                prior_weight * losses.gate_prior(nu(p, aux["gate_input"]), target=prior_target)
            )
        )(phi)
        new_phi = jax.tree.map(
            lambda p, a, b: p - jnp.where(do_h, nm_lr * (h * a + b), 0.0), phi, dnu, dprior
        )
        store = (t % k == k - 1) & computes_g_r
        new_buf = {
            "g_r": jax.tree.map(lambda new, old: jnp.where(store, new, old), g_r, buf["g_r"]),
            "s": jnp.where(store, aux["gate_input"], buf["s"]),
            "valid": buf["valid"] | store,
        }
        params = {**params, "neuromod": new_phi}
        return params, new_buf, {"hypergrad": h, "hyper_applied": do_h.astype(jnp.float32)}

    return step


def uses_hyper_step(t: int, hyper_every: int) -> bool:
    """Whether phase-local step ``t`` runs a hypergradient variant of the train step."""
    k = max(int(hyper_every), 1)
    return t % k in (0, k - 1)


#: Valid values of ``nm.hyper_g_r``.
HYPER_G_R_MODES: tuple[str, ...] = ("recompute", "reuse")


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


def make_eval_step(model) -> Callable:
    """``eval_step(params, batch_stats, batch) -> sums`` over the unmasked rows of one batch.

    Returns a dict of scalar sums (``correct``, ``loss``, ``count``) plus per-row ``logits`` and
    ``embedding`` (padded rows included; the caller masks them).
    """

    def eval_step(backbone_params, batch_stats, batch):
        logits, out = model.apply(
            {"params": backbone_params, "batch_stats": batch_stats}, batch["image"], train=False
        )
        mask = batch["mask"].astype(jnp.float32)
        ce = losses.cross_entropy(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {
            "correct": jnp.sum(correct * mask),
            "loss": jnp.sum(ce * mask),
            "count": jnp.sum(mask),
            "logits": logits,
            "embedding": out["embedding"],
        }

    return eval_step


def make_fisher_fn(model) -> Callable:
    """Per-example CE loss ``(backbone_params, example, batch_stats) -> scalar`` for the Fisher.

    BatchNorm runs in inference mode (METHOD.md: per-example gradients, BN in inference mode).
    """

    def per_example_loss(backbone_params, example, batch_stats):
        logits, _ = model.apply(
            {"params": backbone_params, "batch_stats": batch_stats},
            example["image"][None],
            train=False,
        )
        return losses.cross_entropy(logits, example["label"][None])[0]

    return per_example_loss
