"""The learnable neuromodulator ν_φ of NM-Hebb (Miličević & Grbić, arXiv 2508.19896).

ν_φ(L_CE) = σ(MLP_φ(s)), a two-layer MLP with a sigmoid output that maps the current task loss to a
gate in (0, 1) scaling the consolidation terms (docs/method.md, "Neuromodulator").

Declared interpretation [ours] (docs/method.md): the input is
``s = log1p(stop_gradient(mean L_CE))``; the hidden layer has 16 tanh units; both weight matrices
are made non-negative with a softplus, so ν is monotone non-decreasing in ``s`` by construction
("a high loss opens the gate"). Its
parameters live in the top-level ``params['neuromod']`` subtree of the training parameters, beside
``params['backbone']``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def gate_input(ce_loss: Array) -> Array:
    """The neuromodulator's input ``s = log1p(stop_gradient(L_CE))``.

    Args:
      ce_loss: batch-mean cross-entropy, a scalar (or any array: applied elementwise).

    Returns:
      Array of the same shape, float32, with no gradient to ``ce_loss``.
    """
    return jnp.log1p(jax.lax.stop_gradient(jnp.asarray(ce_loss, jnp.float32)))


class Neuromodulator(nn.Module):
    """Monotone two-layer MLP with sigmoid output: ``ν = σ(w2ᵀ tanh(W1 s + b1) + b2)``.

    ``W1`` and ``w2`` are ``softplus`` of unconstrained parameters, hence non-negative, so ν is
    non-decreasing in ``s``. With the default initialisation ν(s) is close to 0.5 for typical
    losses, so the gate starts half-open and the hypergradient decides where it goes.

    Attributes:
      hidden: width of the hidden layer (16, docs/method.md [ours]).
      init_gate: gate value at ``s = 0`` at initialisation, in (0, 1).

    Call:
      ``Neuromodulator().apply({'params': phi}, s)`` with ``s`` of any shape (usually a scalar)
      returns ν of the same shape, float32, in (0, 1).
    """

    hidden: int = 16
    init_gate: float = 0.5

    @nn.compact
    def __call__(self, s: Array) -> Array:
        s = jnp.asarray(s, jnp.float32)
        w1_raw = self.param("w1_raw", nn.initializers.normal(0.5), (self.hidden,))
        b1 = self.param("b1", nn.initializers.normal(0.5), (self.hidden,))
        w2_raw = self.param("w2_raw", nn.initializers.constant(-2.0), (self.hidden,))
        logit0 = jnp.log(self.init_gate) - jnp.log1p(-self.init_gate)
        b2 = self.param("b2", nn.initializers.constant(logit0), ())
        w1 = nn.softplus(w1_raw)
        w2 = nn.softplus(w2_raw)
        h = jnp.tanh(s[..., None] * w1 + b1)
        # Centre the hidden response at s = 0 so that ν(0) = init_gate exactly at init.
        h0 = jnp.tanh(b1)
        return nn.sigmoid(jnp.sum((h - h0) * w2, axis=-1) + b2)


def init_neuromod(rng: Array, *, hidden: int = 16, init_gate: float = 0.5) -> dict:
    """Initialises the ``params['neuromod']`` subtree.

    Args:
      rng: a ``jax.random.key``.
      hidden: hidden width.
      init_gate: ν at ``s = 0``.

    Returns:
      The parameter dict of :class:`Neuromodulator` (no ``'params'`` wrapper).
    """
    module = Neuromodulator(hidden=hidden, init_gate=init_gate)
    return module.init(rng, jnp.zeros((), jnp.float32))["params"]
