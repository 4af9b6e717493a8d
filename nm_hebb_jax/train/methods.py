"""Methods by name: which loss terms each phase of each method uses (docs/method.md A).

``config.method`` picks a row of :data:`METHOD_TERMS`; :func:`phase_plan` turns it, with the weights
of the config, into the phase's objective (built from the transforms of
:mod:`nm_hebb_jax.objectives`) and the facts the trainer needs (gate mode, balanced batches, EWC).

Declared interpretations [ours]: the comparators add their term in both phases with the same
schedule and epochs as NM-Hebb; ``phase1_only`` keeps the phase-2 epochs as plain CE fine-tuning
(same budget); ``phase2_only`` trains phase 1 with CE alone (or starts from ``config.init_from``)
and then runs NM-Hebb's phase 2 (pair + CE + EWC anchored at the end of phase 1).
"""

from __future__ import annotations

import dataclasses

from nm_hebb_jax import objectives as O
from nm_hebb_jax.neuromod import Neuromodulator

# Terms per phase. 'gate' = the learnable neuromodulator gates the regularisers,
# 'fixed_gate' = ν ≡ nm.fixed_gate, 'ls' = label smoothing.
METHOD_TERMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "nm_hebb": (("hebb", "ewc", "gate"), ("pair", "ewc")),
    "baseline": ((), ()),
    "label_smoothing": (("ls",), ("ls",)),
    "center_loss": (("center",), ("center",)),
    "supcon": (("supcon",), ("supcon",)),
    "phase1_only": (("hebb", "ewc", "gate"), ()),
    "phase2_only": ((), ("pair", "ewc")),
    "no_gate": (("hebb", "ewc", "fixed_gate"), ("pair", "ewc")),
    "hebb_only": (("hebb", "gate"), ("pair",)),
    "ewc_only": (("ewc", "gate"), ("pair", "ewc")),
}
#: The values of ``config.method``.
METHODS: tuple[str, ...] = tuple(METHOD_TERMS)


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """What one phase trains.

    Attributes:
      phase: 1 or 2.
      terms: the method's terms in this phase (after the phase-2 switches).
      objective: ``(params, state, batch, rng) -> (loss, aux)`` (:mod:`nm_hebb_jax.objectives`).
      gate_mode: ``None`` (no neuromodulator) or ``'hypergradient' | 'joint_prior' | 'fixed'``.
      uses_ewc: the objective reads ``state['ewc']``.
      balanced: P×K class-balanced batches.
      centers: ``params['centers']`` is trained (center loss).
    """

    phase: int
    terms: tuple[str, ...]
    objective: O.Objective
    gate_mode: str | None
    uses_ewc: bool
    balanced: bool
    centers: bool

    @property
    def neuromod(self) -> Neuromodulator | None:
        """The gate's neuromodulator module (``None`` without a gate)."""
        gate = self.objective.gate
        return None if gate is None else gate.neuromod


def method_terms(config, phase: int) -> tuple[str, ...]:
    """The terms of ``config.method`` in ``phase``, with ``config.phase2`` switches applied."""
    if config.method not in METHOD_TERMS:
        raise ValueError(
            f"unknown method {config.method!r}; set --config.method to one of {', '.join(METHODS)}"
        )
    terms = METHOD_TERMS[config.method][phase - 1]
    if phase == 2 and "pair" in terms:
        terms = tuple(t for t in terms if t != "ewc" or config.phase2.ewc)
        if config.phase2.hebb:
            terms += ("hebb",)
        if config.phase2.gate:
            terms += ("gate",)
    return terms


def neuromodulator(config) -> Neuromodulator:
    """The run's neuromodulator module ν_φ (``config.nm.hidden``): the one the gated objective
    applies, the hypergradient differentiates and the initial parameters come from."""
    return Neuromodulator(hidden=config.nm.hidden)


def phase_plan(
    config, model, phase: int, hebb_layers: tuple[str, ...], *, neuromod=None
) -> PhasePlan:
    """Builds the phase's objective from the config.

    Args:
      config: the run's config.
      model: the backbone.
      phase: 1 or 2.
      hebb_layers: resolved tap names (validated by the caller).
      neuromod: the run's :func:`neuromodulator` (default: a new one from the config).
    """
    terms = method_terms(config, phase)
    ce_weight = config.phase2.ce_weight if (phase == 2 and "pair" in terms) else 1.0
    smoothing = config.comparators.label_smoothing if "ls" in terms else 0.0
    obj = O.classification_objective(model, weight=ce_weight, label_smoothing=smoothing)
    if "hebb" in terms:
        obj = O.with_hebbian(
            obj,
            layers=hebb_layers,
            weight=config.hebb.weight,
            stop_gradient=config.hebb.stop_gradient,
        )
    if "ewc" in terms:
        obj = O.with_ewc(obj, weight=config.ewc.weight, normalize=config.ewc.normalize)
    if "pair" in terms:
        obj = O.with_pairwise_metric(obj, margin=config.metric.margin, weight=config.metric.weight)
    if "center" in terms:
        obj = O.with_center_loss(obj, weight=config.comparators.center_weight)
    if "supcon" in terms:
        obj = O.with_supervised_contrastive(
            obj,
            temperature=config.comparators.supcon_temperature,
            weight=config.comparators.supcon_weight,
        )
    gate_mode = None
    if "gate" in terms or "fixed_gate" in terms:
        gate_mode = "fixed" if "fixed_gate" in terms else config.nm.gate_learning
        obj = O.with_neuromodulation(
            obj,
            targets=tuple(config.nm.targets),
            mode=gate_mode,
            fixed_gate=config.nm.fixed_gate,
            prior_weight=config.nm.prior_weight,
            prior_target=config.nm.prior_target,
            neuromod=neuromod or neuromodulator(config),
        )
    balanced = phase == 2 and config.phase2.balanced and ("pair" in terms or "supcon" in terms)
    return PhasePlan(
        phase=phase,
        terms=terms,
        objective=obj,
        gate_mode=gate_mode,
        uses_ewc="ewc" in terms,
        balanced=balanced,
        centers="center" in terms,
    )


def uses_centers(config) -> bool:
    """Whether any phase of the method trains class centers."""
    return any("center" in method_terms(config, p) for p in (1, 2))
