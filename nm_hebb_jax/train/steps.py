"""Train and eval step factories (one per phase, each ``jax.jit``-compiled once).

The train step is a pure function ``(state, ewc, batch) -> (state, metrics)``. Everything that
changes over time (learning rate, hypergradient schedule) is computed from ``state.step`` inside
the step, so nothing forces a recompilation. The neuromodulator's hypergradient learning (which
steps compute g_R, the φ update) lives in :mod:`nm_hebb_jax.train.hypergradient`; its steps are
separate compiled variants of the same step (``hyper_step``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nm_hebb_jax import losses
from nm_hebb_jax.objectives import TERM_NAMES, regularizer_grad
from nm_hebb_jax.train import hypergradient as H
from nm_hebb_jax.train.state import TrainState

__all__ = ["make_eval_step", "make_train_step"]

PyTree = Any


def _flatten_metrics(loss, aux, grads_backbone, lr) -> dict:
    """The step's scalars; every term of :data:`~nm_hebb_jax.objectives.TERM_NAMES` raw and
    weighted (0.0 when the method does not use it, so every method logs the same term keys)."""
    metrics = {"loss": loss, "lr": lr, "grad_norm": optax.tree.norm(grads_backbone)}
    for k, v in aux["terms"].items():
        metrics[f"terms/{k}"] = v
    for name in TERM_NAMES:
        for key in (f"terms/{name}", f"terms/{name}_weighted"):
            metrics.setdefault(key, jnp.zeros((), jnp.float32))
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
    phi_tx: optax.GradientTransformation | None = None,
    hyper_every: int = 10,
    hyper_normalize: bool = True,
    hyper_norm_decay: float = 0.9,
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
      neuromod: the ``Neuromodulator`` module (with a learned gate, ν at reference losses is
        logged every step).
      phi_tx: φ's optimiser (:func:`nm_hebb_jax.train.hypergradient.make_phi_optimizer`);
        required in hypergradient mode.
      hyper_every: compute the hypergradient every this many steps.
      hyper_normalize, hyper_norm_decay: the scale-free hypergradient (``nm.hyper_normalize``).
      prior_weight: λ_gate of the KL prior in the φ update.
      prior_target: target of the KL prior.
      skip_nonfinite: if True, an update with a non-finite loss or gradient is skipped.
      hyper_step: which variant to build (:func:`~nm_hebb_jax.train.hypergradient.hyper_variant`
        says which one a step uses): ``False`` the plain step; ``True`` or ``'exact'`` computes
        g_R and both stores it (``t % k == k − 1``) and applies the φ update with the exact g_CE
        (``t % k == 0``); ``'store'`` computes and stores g_R only; ``'apply'`` applies the φ
        update with g_R,t estimated by the stored g_R,t−1 (no g_R pass).

    Returns:
      ``step(state, ewc, batch) -> (new_state, metrics)``; ``metrics`` is a flat dict of scalars:
      ``loss``, ``top1``, ``lr``, the backbone's ``grad_norm``, ``param_norm`` (after the update)
      and ``update_norm``, every term (``terms/<name>`` and ``terms/<name>_weighted``), the gate
      and the hypergradient's (with a gate), and ``finite``.
    """
    hyper = gate_mode == "hypergradient"
    variant = {False: None, True: "exact"}.get(hyper_step, hyper_step)
    if variant not in (None, "exact", "store", "apply"):
        raise ValueError(
            f"hyper_step={hyper_step!r} is not supported; use False, True, 'store' or 'apply'"
        )
    if hyper and phi_tx is None:
        raise ValueError("gate_mode='hypergradient' needs phi_tx (φ's optimiser)")
    computes_g_r = variant in ("exact", "store")
    learns_gate = gate_mode in ("hypergradient", "joint_prior") and neuromod is not None
    g_r_fn = regularizer_grad(objective) if hyper and computes_g_r else None

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
        # health beside grad_norm (big_vision's l2_params, l2_updates): the backbone's L2 norms
        metrics["param_norm"] = optax.tree.norm(params["backbone"])
        metrics["update_norm"] = optax.tree.norm(updates["backbone"])
        new_hyper = state.hyper
        if hyper and variant is not None:
            if g_r_fn is not None:
                g_r_now = g_r_fn(state.params, obj_state, batch, rng)["backbone"]
            else:  # 'apply': g_R,t estimated by the stored g_R,t-1
                g_r_now = state.hyper["g_r"]
            new_phi, new_hyper, hmetrics = H.hyper_update(
                state.hyper,
                state.params["neuromod"],
                g_total=grads["backbone"],
                g_r_now=g_r_now,
                gate=aux["gate"],
                gate_input=aux["gate_input"],
                lr=lr,
                t=t,
                hyper_every=hyper_every,
                applies=variant != "store",
                stores=computes_g_r,
                neuromod=neuromod,
                phi_tx=phi_tx,
                normalize=hyper_normalize,
                norm_decay=hyper_norm_decay,
                prior_weight=prior_weight,
                prior_target=prior_target,
            )
            params = {**params, "neuromod": new_phi}
            metrics.update(hmetrics)
        elif hyper:  # same metric keys in every variant
            metrics.update({key: jnp.zeros(()) for key in H.HYPER_METRIC_KEYS})
        if learns_gate:  # the learned gate as a function: ν at fixed reference losses
            metrics.update(H.gate_reference_metrics(neuromod, params["neuromod"]))
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
            # A skipped update keeps the parameters and optimiser moments but still advances
            # the optimiser's step counts (its integer leaves), so the rate it applies stays
            # schedule(t) for every later step, as logged and stored for the hypergradient.
            counts = jax.tree.map(
                lambda n, o: n if jnp.issubdtype(n.dtype, jnp.integer) else o,
                opt_state,
                state.opt_state,
            )
            keep = state.replace(step=state.step + 1, opt_state=counts)
            new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, keep)
        return new_state, metrics

    return step


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
