"""Loss functions of nm_hebb_jax: pure ``jnp`` functions, no model or config imports.

- classification: :func:`cross_entropy`, :func:`accuracy`.
- hebbian: :func:`hebbian_regularizer` (R_Hebb of NM-Hebb, arXiv 2508.19896).
- gate: :func:`gate_prior`, :func:`gate_hypergradient` (the neuromodulator's gate ν).
- consolidation: :func:`ewc_penalty`, :func:`normalize_fisher` (the Fisher itself:
  :func:`nm_hebb_jax.train.ewc.fisher_diagonal`).
- metric: :func:`pairwise_contrastive_loss`, :func:`center_loss`,
  :func:`supervised_contrastive_loss`.
- hebbian_rules: :func:`hebbian_rule_loss`, :func:`hebbian_update` (Miconi, arXiv 2107.01729).
"""

from nm_hebb_jax.losses.classification import accuracy, cross_entropy
from nm_hebb_jax.losses.consolidation import ewc_penalty, normalize_fisher
from nm_hebb_jax.losses.gate import gate_hypergradient, gate_prior
from nm_hebb_jax.losses.hebbian import STOP_GRADIENT_MODES, hebbian_regularizer
from nm_hebb_jax.losses.hebbian_rules import RULES, hebbian_rule_loss, hebbian_update
from nm_hebb_jax.losses.metric import (
    center_loss,
    pairwise_contrastive_loss,
    supervised_contrastive_loss,
)

__all__ = [
    "RULES",
    "STOP_GRADIENT_MODES",
    "accuracy",
    "center_loss",
    "cross_entropy",
    "ewc_penalty",
    "gate_hypergradient",
    "gate_prior",
    "hebbian_regularizer",
    "hebbian_rule_loss",
    "hebbian_update",
    "normalize_fisher",
    "pairwise_contrastive_loss",
    "supervised_contrastive_loss",
]
