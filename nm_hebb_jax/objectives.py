"""Composable training objectives: the one place where model outputs meet the losses.

An *objective* is a function ``objective(params, state, batch, rng) -> (loss, aux)``:

- ``params``: ``{'backbone': <Flax params of the model>, 'neuromod': <ν_φ params>, ...}``.
- ``state``: non-differentiated state, ``{'batch_stats': ..., 'ewc': {'anchor': ..., 'fisher':
  ...}}``
  (``'ewc'`` only needed by :func:`with_ewc`).
- ``batch``: ``{'image': float [N, H, W, 3], 'label': int [N]}``.
- ``rng``: a ``jax.random.key`` (dropout / stochastic depth).
- ``aux``: ``{'logits': [N, C], 'embedding': [N, D], 'taps': {layer: (activation, kernel)},
  'batch_stats': <updated>, 'terms': {name: scalar}, ...}``.

``aux['terms']`` holds every loss term twice, raw (``'hebb'``) and as it enters the loss
(``'hebb_weighted'``); the returned loss is always the sum of the ``*_weighted`` terms. A transform
``with_X(objective, ...)`` returns a new objective of the same signature that adds or rescales
terms,
so the phase-1 objective of NM-Hebb (arXiv 2508.19896) is::

    obj = with_neuromodulation(
        with_ewc(with_hebbian(classification_objective(model), layers=(layer,), weight=0.1),
                 weight=1.0),
        targets=('hebb', 'ewc'))

The model runs once however many transforms are stacked: transforms ask the base objective for the
conv activations they need through the keyword-only ``taps`` argument, which every objective accepts
(``objective(params, state, batch, rng, taps=('stage2_block0/conv1',))``) and forwards downwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nm_hebb_jax import losses
from nm_hebb_jax.models import collect_taps
from nm_hebb_jax.neuromod import Neuromodulator, gate_input

Array = jax.Array
PyTree = Any
Objective = Callable[..., tuple[Array, dict]]

GATE_MODES = ("hypergradient", "joint_prior", "fixed")


def total_loss(terms: dict[str, Array]) -> Array:
    """Sum of the ``*_weighted`` entries of a terms dict (the objective's loss)."""
    weighted = [v for k, v in sorted(terms.items()) if k.endswith("_weighted")]
    return jnp.sum(jnp.stack(weighted)) if weighted else jnp.zeros((), jnp.float32)


def _with_term(aux: dict, name: str, raw: Array, weighted: Array) -> dict:
    terms = dict(aux["terms"])
    if name in terms:
        raise ValueError(f"term {name!r} is added twice; stack each transform once")
    dtype = jnp.promote_types(jnp.result_type(raw, weighted), jnp.float32)  # f64 stays f64
    terms[name] = jnp.asarray(raw, dtype)
    terms[f"{name}_weighted"] = jnp.asarray(weighted, dtype)
    return {**aux, "terms": terms}


def classification_objective(
    model, *, weight: float = 1.0, label_smoothing: float = 0.0, train: bool = True
) -> Objective:
    """The base objective: one forward pass and softmax cross-entropy.

    Runs ``model.apply`` once with ``mutable=['batch_stats', 'intermediates']`` and records the term
    ``'ce'`` (batch-mean CE) weighted by ``weight``. The conv layers requested through ``taps``
    (plus
    the model's own ``hebb_layers``) sow their activation and kernel.

    Args:
      model: a backbone from :func:`nm_hebb_jax.models.get_model` (returns ``(logits, aux)``).
      weight: weight of the CE term (λ_ce2 in phase 2; 1 in phase 1).
      label_smoothing: optax label smoothing α (0 = plain CE).
      train: apply the model in training mode (BatchNorm batch statistics, dropout).

    Returns:
      ``objective(params, state, batch, rng, *, taps=()) -> (loss, aux)``; see the module docstring.
    """

    def objective(params, state, batch, rng, *, taps: Sequence[str] = ()):
        layers = tuple(dict.fromkeys(tuple(model.hebb_layers) + tuple(taps)))
        tapped = model.clone(hebb_layers=layers) if layers != tuple(model.hebb_layers) else model
        variables = {"params": params["backbone"], "batch_stats": state["batch_stats"]}
        (logits, out), new_vars = tapped.apply(
            variables,
            batch["image"],
            train=train,
            mutable=["batch_stats", "intermediates"],
            rngs={"dropout": rng},
        )
        ce = jnp.mean(losses.cross_entropy(logits, batch["label"], label_smoothing=label_smoothing))
        aux = {
            "logits": logits,
            "embedding": out["embedding"],
            "taps": collect_taps(new_vars.get("intermediates", {}), layers) if layers else {},
            "batch_stats": new_vars["batch_stats"],
            "terms": {},
        }
        aux = _with_term(aux, "ce", ce, weight * ce)
        return total_loss(aux["terms"]), aux

    return objective


def with_hebbian(
    objective: Objective,
    *,
    layers: Sequence[str],
    weight: float = 0.1,
    stop_gradient: str = "none",
) -> Objective:
    """Adds the Hebbian regulariser R_Hebb (METHOD.md A, Phase 1), averaged over ``layers``.

    Term ``'hebb'`` = mean over layers of ``(1/C) Σ_f (ā_f − w̄_f)²``
    (:func:`nm_hebb_jax.losses.hebbian_regularizer`); ``'hebb_weighted'`` = ``weight · hebb``.

    Args:
      objective: the objective to extend.
      layers: conv layer names (``model.conv_layer_names()``); at least one.
      weight: λ_hebb.
      stop_gradient: ``'none'``, ``'activations'`` or ``'weights'`` (which side is detached).
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError(
            "with_hebbian needs at least one layer name (see model.conv_layer_names())"
        )

    def wrapped(params, state, batch, rng, *, taps: Sequence[str] = ()):
        _, aux = objective(params, state, batch, rng, taps=tuple(taps) + layers)
        values = [
            losses.hebbian_regularizer(*aux["taps"][name], stop_gradient=stop_gradient)
            for name in layers
        ]
        r = jnp.mean(jnp.stack(values))
        aux = _with_term(aux, "hebb", r, weight * r)
        return total_loss(aux["terms"]), aux

    return wrapped


def with_ewc(objective: Objective, *, weight: float = 1.0, normalize: bool = True) -> Objective:
    """Adds the elastic-weight-consolidation term R_EWC (METHOD.md A, "Consolidation").

    Term ``'ewc'`` = ``mean_i F̃_i (θ_i − θ*_i)²`` over the backbone parameters, with the anchor θ*
    and the diagonal Fisher F read from ``state['ewc'] = {'anchor': ..., 'fisher': ...}``
    (:func:`nm_hebb_jax.losses.ewc_penalty`); ``'ewc_weighted'`` = ``weight · ewc``. The state,
    the Fisher and its refresh: :mod:`nm_hebb_jax.train.ewc`.

    Args:
      objective: the objective to extend.
      weight: λ_ewc.
      normalize: divide the Fisher by its mean (F̃ = F / mean F).
    """

    def wrapped(params, state, batch, rng, *, taps: Sequence[str] = ()):
        _, aux = objective(params, state, batch, rng, taps=taps)
        if "ewc" not in state:
            raise ValueError(
                "with_ewc needs state['ewc'] = {'anchor': ..., 'fisher': ...}; "
                "build it with nm_hebb_jax.train.ewc.init_ewc_state"
            )
        r = losses.ewc_penalty(
            params["backbone"], state["ewc"]["anchor"], state["ewc"]["fisher"], normalize=normalize
        )
        aux = _with_term(aux, "ewc", r, weight * r)
        return total_loss(aux["terms"]), aux

    return wrapped


def with_neuromodulation(
    objective: Objective,
    *,
    targets: Sequence[str] = ("hebb", "ewc"),
    mode: str = "hypergradient",
    fixed_gate: float = 1.0,
    prior_weight: float = 1e-3,
    prior_target: float = 0.5,
    neuromod: Neuromodulator | None = None,
) -> Objective:
    """Gates the ``targets`` terms with the neuromodulator ν_φ(L_CE) (METHOD.md A, Phase 1).

    ``'<t>_weighted'`` becomes ``ν · '<t>_weighted'`` for every target term present; ν is computed
    by
    :class:`nm_hebb_jax.neuromod.Neuromodulator` from ``s = log1p(stop_gradient(ce))`` with
    parameters ``params['neuromod']``. Adds the term ``'gate_prior'`` = KL(Bern(ν) ‖ Bern(target)),
    weighted by ``prior_weight`` (it reaches only φ), and records in ``aux``:

    - ``'gate'``: ν (scalar), ``'gate_input'``: s,
    - ``'regularizer'``: the *ungated* sum of the targeted weighted terms (λ_hebb·R_Hebb +
      λ_ewc·R_EWC),
      whose gradient is the g_R of the one-step hypergradient (the trainer uses it).

    ``mode`` only changes how ν is formed here: ``'hypergradient'`` and ``'joint_prior'`` compute it
    from φ (differentiable; the trainer decides how φ is updated), ``'fixed'`` uses ``fixed_gate``
    (the ``no_gate`` ablation uses 1.0) and the prior term is 0.

    Args:
      objective: the objective to extend (must record a ``'ce'`` term).
      targets: names of the terms to gate.
      mode: ``'hypergradient'``, ``'joint_prior'`` or ``'fixed'``.
      fixed_gate: ν in ``'fixed'`` mode.
      prior_weight: λ_gate of the KL prior.
      prior_target: the Bernoulli target of the prior.
      neuromod: the module (default ``Neuromodulator()``).
    """
    if mode not in GATE_MODES:
        raise ValueError(f"unknown gate mode {mode!r}; use one of {', '.join(GATE_MODES)}")
    targets = tuple(targets)
    module = neuromod or Neuromodulator()

    def wrapped(params, state, batch, rng, *, taps: Sequence[str] = ()):
        _, aux = objective(params, state, batch, rng, taps=taps)
        terms = dict(aux["terms"])
        if "ce" not in terms:
            raise ValueError("with_neuromodulation needs a 'ce' term (classification_objective)")
        s = gate_input(terms["ce"])
        if mode == "fixed":
            gate = jnp.asarray(fixed_gate, jnp.float32)
            prior = jnp.zeros((), jnp.float32)
        else:
            if "neuromod" not in params:
                raise ValueError(
                    "with_neuromodulation needs params['neuromod'] "
                    "(nm_hebb_jax.neuromod.init_neuromod)"
                )
            gate = module.apply({"params": params["neuromod"]}, s)
            prior = losses.gate_prior(gate, target=prior_target)
        present = [t for t in targets if f"{t}_weighted" in terms]
        ungated = [terms[f"{t}_weighted"] for t in present]
        regularizer = jnp.sum(jnp.stack(ungated)) if ungated else jnp.zeros((), jnp.float32)
        for t in present:
            terms[f"{t}_weighted"] = gate * terms[f"{t}_weighted"]
        aux = {**aux, "terms": terms, "gate": gate, "gate_input": s, "regularizer": regularizer}
        weight = 0.0 if mode == "fixed" else prior_weight
        aux = _with_term(aux, "gate_prior", prior, weight * prior)
        return total_loss(aux["terms"]), aux

    return wrapped


def with_pairwise_metric(
    objective: Objective, *, margin: float = 1.0, weight: float = 1.0
) -> Objective:
    """Adds the pairwise contrastive loss on the embeddings (METHOD.md A, Phase 2).

    Term ``'pair'`` = :func:`nm_hebb_jax.losses.pairwise_contrastive_loss` over all pairs of the
    (global) batch of L2-normalised embeddings; ``'pair_weighted'`` = ``weight · pair``.
    """

    def wrapped(params, state, batch, rng, *, taps: Sequence[str] = ()):
        _, aux = objective(params, state, batch, rng, taps=taps)
        r = losses.pairwise_contrastive_loss(aux["embedding"], batch["label"], margin=margin)
        aux = _with_term(aux, "pair", r, weight * r)
        return total_loss(aux["terms"]), aux

    return wrapped


def with_center_loss(objective: Objective, *, weight: float = 0.01) -> Objective:
    """Adds the center loss (Wen et al. 2016) with learnable centers ``params['centers']`` [C, D].

    Term ``'center'`` = batch mean of ½‖z_i − c_{y_i}‖² on the raw embeddings.
    """

    def wrapped(params, state, batch, rng, *, taps: Sequence[str] = ()):
        _, aux = objective(params, state, batch, rng, taps=taps)
        if "centers" not in params:
            raise ValueError("with_center_loss needs params['centers'] of shape [num_classes, D]")
        r = jnp.mean(losses.center_loss(aux["embedding"], batch["label"], params["centers"]))
        aux = _with_term(aux, "center", r, weight * r)
        return total_loss(aux["terms"]), aux

    return wrapped


def with_supervised_contrastive(
    objective: Objective, *, temperature: float = 0.1, weight: float = 1.0
) -> Objective:
    """Adds the supervised contrastive loss (Khosla et al. 2020) on the embeddings.

    Term ``'supcon'`` = :func:`nm_hebb_jax.losses.supervised_contrastive_loss` (batch mean).
    """

    def wrapped(params, state, batch, rng, *, taps: Sequence[str] = ()):
        _, aux = objective(params, state, batch, rng, taps=taps)
        r = jnp.mean(
            losses.supervised_contrastive_loss(
                aux["embedding"], batch["label"], temperature=temperature
            )
        )
        aux = _with_term(aux, "supcon", r, weight * r)
        return total_loss(aux["terms"]), aux

    return wrapped


def regularizer_grad(objective: Objective) -> Callable[..., PyTree]:
    """``(params, state, batch, rng) -> g_R``: gradient of ``aux['regularizer']`` w.r.t. params.

    ``aux['regularizer']`` (set by :func:`with_neuromodulation`) depends only on the tapped
    activations and on the parameters, so XLA removes everything after the tapped layer: g_R costs a
    forward and backward pass through the layers up to the tap (METHOD.md, hypergradient cost);
    compiled with the training gradient from the same inputs, as the train step does, the
    forward is merged with the training forward and only the backward is added.
    """

    def reg(params, state, batch, rng):
        _, aux = objective(params, state, batch, rng)
        return aux["regularizer"]

    return jax.grad(reg)
