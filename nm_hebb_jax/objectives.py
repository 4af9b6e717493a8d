"""Composable training objectives: the one place where model outputs meet the losses.

An *objective* is a callable ``objective(params, state, batch, rng) -> (loss, aux)``:

- ``params``: ``{'backbone': <Flax params of the model>, 'neuromod': <ν_φ params>, ...}``.
- ``state``: non-differentiated state, ``{'batch_stats': ..., 'ewc': {'anchor', 'fisher'}}``
  (``'ewc'`` only needed by :func:`with_ewc`).
- ``batch``: ``{'image': float [N, H, W, 3], 'label': int [N]}``.
- ``rng``: a ``jax.random.key`` (dropout / stochastic depth).
- ``aux``: ``{'logits': [N, C], 'embedding': [N, D], 'taps': {layer: (activation, kernel)},
  'batch_stats': <updated>, 'terms': {name: scalar}}``, plus ``'gate'``, ``'gate_input'`` and
  ``'regularizer'`` when the objective is gated.

:func:`classification_objective` builds one from a model (its term ``'ce'``); each transform
``with_X(objective, ...)`` returns a new objective with one more named term, or with the gate.
An objective is a value, not a chain of wrappers: a list of :class:`Term` s, each a function of the
model's outputs with its weight, and at most one :class:`Gate`. Calling it runs the model once
(with every tap a term asks for), evaluates each term, scales the gate's targets by ν and sums
once::

    loss = Σ_t c_t · weight_t · raw_t,   c_t = ν for the gate's targets, else 1

so the order in which transforms are applied does not matter. ``aux['terms']`` holds every term
raw (``'hebb'``) and as it enters the loss (``'hebb_weighted'``). The phase-1 objective of NM-Hebb
(arXiv 2508.19896) is::

    obj = with_neuromodulation(
        with_ewc(with_hebbian(classification_objective(model), layers=(layer,), weight=0.1),
                 weight=1.0),
        targets=('hebb', 'ewc'))

Extra conv activations can be requested with the keyword-only ``taps`` argument
(``objective(params, state, batch, rng, taps=('stage2_block0/conv1',))``): they are returned in
``aux['taps']`` from the same forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nm_hebb_jax import losses
from nm_hebb_jax.models import collect_taps
from nm_hebb_jax.neuromod import Neuromodulator, gate_input

Array = jax.Array
PyTree = Any
#: ``(params, state, batch, outputs) -> raw scalar``; ``outputs`` holds the model's ``logits``,
#: ``embedding`` and ``taps``.
TermFn = Callable[[PyTree, dict, dict, dict], Array]

#: How a gate's ν is formed (``config.nm.gate_learning``).
GATE_MODES: tuple[str, ...] = ("hypergradient", "joint_prior", "fixed")
#: The name of every term a transform of this module adds: what a trainer logs for every method
#: (a term a method does not use is logged as 0.0, so curves of two methods can be overlaid).
TERM_NAMES: tuple[str, ...] = ("ce", "hebb", "ewc", "pair", "center", "supcon", "gate_prior")


@dataclasses.dataclass(frozen=True)
class Term:
    """One named loss term: ``weight · fn(params, state, batch, outputs)``.

    Attributes:
      name: the term's key in ``aux['terms']`` (unique within an objective).
      fn: the raw value from the model's outputs (``logits``, ``embedding``, ``taps``).
      weight: its weight in the loss.
      taps: conv layers whose ``(activation, kernel)`` the term reads from ``outputs['taps']``.
    """

    name: str
    fn: TermFn
    weight: float
    taps: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Gate:
    """The neuromodulator's gate ν on the ``targets`` terms (see :func:`with_neuromodulation`)."""

    targets: tuple[str, ...]
    mode: str
    fixed_gate: float
    prior_weight: float
    prior_target: float
    neuromod: Neuromodulator


class Objective:
    """A model's classification loss with named terms and an optional gate (module docstring).

    Build one with :func:`classification_objective` and the ``with_*`` transforms; call it as
    ``objective(params, state, batch, rng, *, taps=()) -> (loss, aux)``.
    """

    def __init__(self, model, *, train: bool, terms: tuple[Term, ...], gate: Gate | None = None):
        self.model = model
        self.train = train
        self.terms = terms
        self.gate = gate

    def with_term(self, term: Term) -> Objective:
        """This objective with one more term."""
        if any(t.name == term.name for t in self.terms):
            raise ValueError(f"term {term.name!r} is added twice; stack each transform once")
        return Objective(self.model, train=self.train, terms=(*self.terms, term), gate=self.gate)

    def with_gate(self, gate: Gate) -> Objective:
        """This objective with its gate."""
        if self.gate is not None:
            raise ValueError("the objective already has a gate; apply with_neuromodulation once")
        return Objective(self.model, train=self.train, terms=self.terms, gate=gate)

    def outputs(self, params, state, batch, rng, *, taps: Sequence[str] = ()) -> dict:
        """One forward pass: ``logits``, ``embedding``, ``taps`` and the new ``batch_stats``."""
        model = self.model
        wanted = tuple(taps) + tuple(name for term in self.terms for name in term.taps)
        layers = tuple(dict.fromkeys(tuple(model.hebb_layers) + wanted))
        tapped = model.clone(hebb_layers=layers) if layers != tuple(model.hebb_layers) else model
        variables = {"params": params["backbone"], "batch_stats": state["batch_stats"]}
        (logits, out), new_vars = tapped.apply(
            variables,
            batch["image"],
            train=self.train,
            mutable=["batch_stats", "intermediates"],
            rngs={"dropout": rng},
        )
        return {
            "logits": logits,
            "embedding": out["embedding"],
            "taps": collect_taps(new_vars.get("intermediates", {}), layers) if layers else {},
            "batch_stats": new_vars["batch_stats"],
        }

    def __call__(self, params, state, batch, rng, *, taps: Sequence[str] = ()):
        aux = self.outputs(params, state, batch, rng, taps=taps)
        terms = {}
        for term in self.terms:
            raw = term.fn(params, state, batch, aux)
            terms[term.name] = _as_term(raw, term.weight * raw)
        if self.gate is not None:
            terms, gating = _apply_gate(self.gate, params, terms)
            aux.update(gating)
        aux["terms"] = {}
        for name, (raw, weighted) in terms.items():
            aux["terms"][name] = raw
            aux["terms"][f"{name}_weighted"] = weighted
        return total_loss(aux["terms"]), aux


def _as_term(raw: Array, weighted: Array) -> tuple[Array, Array]:
    """``(raw, weighted)`` in one dtype, at least float32 (float64 stays float64)."""
    dtype = jnp.promote_types(jnp.result_type(raw, weighted), jnp.float32)
    return jnp.asarray(raw, dtype), jnp.asarray(weighted, dtype)


def _apply_gate(gate: Gate, params, terms: dict) -> tuple[dict, dict]:
    """The terms with ν on the gate's targets and the gate's prior term added; the gate's aux."""
    s = gate_input(terms["ce"][0])
    if gate.mode == "fixed":
        nu = jnp.asarray(gate.fixed_gate, jnp.float32)
        prior = jnp.zeros((), jnp.float32)
    else:
        if "neuromod" not in params:
            raise ValueError(
                "with_neuromodulation needs params['neuromod'] (nm_hebb_jax.neuromod.init_neuromod)"
            )
        nu = gate.neuromod.apply({"params": params["neuromod"]}, s)
        prior = losses.gate_prior(nu, target=gate.prior_target)
    present = [t for t in gate.targets if t in terms]
    ungated = [terms[t][1] for t in present]
    regularizer = jnp.sum(jnp.stack(ungated)) if ungated else jnp.zeros((), jnp.float32)
    terms = {k: (raw, nu * w) if k in present else (raw, w) for k, (raw, w) in terms.items()}
    weight = 0.0 if gate.mode == "fixed" else gate.prior_weight
    terms["gate_prior"] = _as_term(prior, weight * prior)
    return terms, {"gate": nu, "gate_input": s, "regularizer": regularizer}


def total_loss(terms: dict[str, Array]) -> Array:
    """Sum of the ``*_weighted`` entries of a terms dict (the objective's loss), in name order."""
    weighted = [v for k, v in sorted(terms.items()) if k.endswith("_weighted")]
    return jnp.sum(jnp.stack(weighted)) if weighted else jnp.zeros((), jnp.float32)


def _objective(objective) -> Objective:
    if not isinstance(objective, Objective):
        raise TypeError(
            f"expected an objective built by classification_objective, got {type(objective)!r}"
        )
    return objective


def classification_objective(
    model, *, weight: float = 1.0, label_smoothing: float = 0.0, train: bool = True
) -> Objective:
    """The base objective: one forward pass and softmax cross-entropy.

    Runs ``model.apply`` once with ``mutable=['batch_stats', 'intermediates']`` and records the term
    ``'ce'`` (batch-mean CE) weighted by ``weight``. The conv layers the terms (and ``taps``)
    request, plus the model's own ``hebb_layers``, sow their activation and kernel.

    Args:
      model: a backbone from :func:`nm_hebb_jax.models.get_model` (returns ``(logits, aux)``).
      weight: weight of the CE term (λ_ce2 in phase 2; 1 in phase 1).
      label_smoothing: optax label smoothing α (0 = plain CE).
      train: apply the model in training mode (BatchNorm batch statistics, dropout).

    Returns:
      ``objective(params, state, batch, rng, *, taps=()) -> (loss, aux)``; see the module docstring.
    """

    def ce(params, state, batch, out):
        del params, state
        return jnp.mean(
            losses.cross_entropy(out["logits"], batch["label"], label_smoothing=label_smoothing)
        )

    return Objective(model, train=train, terms=(Term("ce", ce, weight),))


def with_hebbian(
    objective: Objective,
    *,
    layers: Sequence[str],
    weight: float = 0.1,
    stop_gradient: str = "none",
) -> Objective:
    """Adds the Hebbian regulariser R_Hebb (docs/method.md A, Phase 1), averaged over ``layers``.

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

    def hebb(params, state, batch, out):
        del params, state, batch
        values = [
            losses.hebbian_regularizer(*out["taps"][name], stop_gradient=stop_gradient)
            for name in layers
        ]
        return jnp.mean(jnp.stack(values))

    return _objective(objective).with_term(Term("hebb", hebb, weight, taps=layers))


def with_ewc(objective: Objective, *, weight: float = 1.0, normalize: bool = True) -> Objective:
    """Adds the elastic-weight-consolidation term R_EWC (docs/method.md A, "Consolidation").

    Term ``'ewc'`` = ``mean_i F̃_i (θ_i − θ*_i)²`` over the backbone parameters, with the anchor θ*
    and the diagonal Fisher F read from ``state['ewc'] = {'anchor': ..., 'fisher': ...}``
    (:func:`nm_hebb_jax.losses.ewc_penalty`); ``'ewc_weighted'`` = ``weight · ewc``. The state,
    the Fisher and its refresh: :mod:`nm_hebb_jax.train.ewc`.

    Args:
      objective: the objective to extend.
      weight: λ_ewc.
      normalize: divide the Fisher by its mean (F̃ = F / mean F).
    """

    def ewc(params, state, batch, out):
        del batch, out
        if "ewc" not in state:
            raise ValueError(
                "with_ewc needs state['ewc'] = {'anchor': ..., 'fisher': ...}; "
                "build it with nm_hebb_jax.train.ewc.init_ewc_state"
            )
        return losses.ewc_penalty(
            params["backbone"], state["ewc"]["anchor"], state["ewc"]["fisher"], normalize=normalize
        )

    return _objective(objective).with_term(Term("ewc", ewc, weight))


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
    """Gates the ``targets`` terms with the neuromodulator ν_φ(L_CE) (docs/method.md A, Phase 1).

    Each target term present in the objective (whenever its transform was applied) enters the loss
    as ``ν · weight · raw``; ν is computed by :class:`nm_hebb_jax.neuromod.Neuromodulator` from
    ``s = log1p(stop_gradient(ce))`` with parameters ``params['neuromod']``. Adds the term
    ``'gate_prior'`` = KL(Bern(ν) ‖ Bern(target)), weighted by ``prior_weight`` (it reaches only φ),
    and records in ``aux``:

    - ``'gate'``: ν (scalar), ``'gate_input'``: s,
    - ``'regularizer'``: the *ungated* sum of the target terms (λ_hebb·R_Hebb + λ_ewc·R_EWC), whose
      gradient is the g_R of the one-step hypergradient (the trainer uses it).

    ``mode`` only changes how ν is formed here: ``'hypergradient'`` and ``'joint_prior'`` compute it
    from φ (differentiable; the trainer decides how φ is updated), ``'fixed'`` uses ``fixed_gate``
    (the ``no_gate`` ablation uses 1.0) and the prior term is 0.

    Args:
      objective: the objective to extend.
      targets: names of the terms to gate.
      mode: ``'hypergradient'``, ``'joint_prior'`` or ``'fixed'``.
      fixed_gate: ν in ``'fixed'`` mode.
      prior_weight: λ_gate of the KL prior.
      prior_target: the Bernoulli target of the prior.
      neuromod: the module (default ``Neuromodulator()``); the trainer reads it from
        ``objective.gate.neuromod`` for the hypergradient.
    """
    if mode not in GATE_MODES:
        raise ValueError(f"unknown gate mode {mode!r}; use one of {', '.join(GATE_MODES)}")
    gate = Gate(
        targets=tuple(targets),
        mode=mode,
        fixed_gate=fixed_gate,
        prior_weight=prior_weight,
        prior_target=prior_target,
        neuromod=neuromod or Neuromodulator(),
    )
    return _objective(objective).with_gate(gate)


def with_pairwise_metric(
    objective: Objective, *, margin: float = 1.0, weight: float = 1.0
) -> Objective:
    """Adds the pairwise contrastive loss on the embeddings (docs/method.md A, Phase 2).

    Term ``'pair'`` = :func:`nm_hebb_jax.losses.pairwise_contrastive_loss` over all pairs of the
    (global) batch of L2-normalised embeddings; ``'pair_weighted'`` = ``weight · pair``.
    """

    def pair(params, state, batch, out):
        del params, state
        return losses.pairwise_contrastive_loss(out["embedding"], batch["label"], margin=margin)

    return _objective(objective).with_term(Term("pair", pair, weight))


def with_center_loss(objective: Objective, *, weight: float = 0.01) -> Objective:
    """Adds the center loss (Wen et al. 2016) with learnable centers ``params['centers']`` [C, D].

    Term ``'center'`` = batch mean of ½‖z_i − c_{y_i}‖² on the raw embeddings.
    """

    def center(params, state, batch, out):
        del state
        if "centers" not in params:
            raise ValueError("with_center_loss needs params['centers'] of shape [num_classes, D]")
        return jnp.mean(losses.center_loss(out["embedding"], batch["label"], params["centers"]))

    return _objective(objective).with_term(Term("center", center, weight))


def with_supervised_contrastive(
    objective: Objective, *, temperature: float = 0.1, weight: float = 1.0
) -> Objective:
    """Adds the supervised contrastive loss (Khosla et al. 2020) on the embeddings.

    Term ``'supcon'`` = :func:`nm_hebb_jax.losses.supervised_contrastive_loss` (batch mean).
    """

    def supcon(params, state, batch, out):
        del params, state
        return jnp.mean(
            losses.supervised_contrastive_loss(
                out["embedding"], batch["label"], temperature=temperature
            )
        )

    return _objective(objective).with_term(Term("supcon", supcon, weight))


def regularizer_grad(objective: Objective) -> Callable[..., PyTree]:
    """``(params, state, batch, rng) -> g_R``: gradient of ``aux['regularizer']`` w.r.t. params.

    ``aux['regularizer']`` (set by :func:`with_neuromodulation`) depends only on the tapped
    activations and on the parameters, so XLA removes everything after the tapped layer: g_R costs a
    forward and backward pass through the layers up to the tap (docs/method.md, hypergradient cost);
    compiled with the training gradient from the same inputs, as the train step does, the
    forward is merged with the training forward and only the backward is added.
    """

    def reg(params, state, batch, rng):
        _, aux = objective(params, state, batch, rng)
        return aux["regularizer"]

    return jax.grad(reg)
