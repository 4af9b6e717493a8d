"""Losses of the NM-Hebb gate ν (Miličević & Grbić, arXiv 2508.19896; docs/method.md, "How φ
learns").

- ``gate_prior``: KL(Bernoulli(ν) ‖ Bernoulli(target)), the weak prior against saturation.
- ``gate_hypergradient``: the one-step hypergradient dL_CE,t+1/dν_t = −η ⟨g_CE,t+1, g_R,t⟩ of a
  plain-SGD step Δθ_t = −η (g_CE,t + ν_t g_R,t + …).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from nm_hebb_jax.losses._utils import check_same_structure, compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PyTree = Any


def gate_prior(
    gate: ArrayLike, *, target: float | ArrayLike = 0.5, eps: float | None = None
) -> Array:
    """Elementwise KL(Bernoulli(gate) ‖ Bernoulli(target)).

    ``KL = g log(g/t) + (1 − g) log((1 − g)/(1 − t))``, zero iff ``g = t``, and
    ``KL(g ‖ t) = KL(1 − g ‖ 1 − t)`` (so symmetric about 0.5 for ``t = 0.5``). Inside the
    logs ``g`` is clipped to ``[eps, 1 − eps]`` while the linear weights use ``g`` itself, so the
    value at ``g ∈ {0, 1}`` is the exact limit (up to ``eps``) and the gradient there stays finite
    and points back towards the target (``≈ logit(eps) − logit(t)`` at 0). Inside
    ``[eps, 1 − eps]`` the value and gradient (``logit(g) − logit(t)``) are exact.

    Args:
      gate: gate values in ``[0, 1]``, any shape (a scalar gives a scalar).
      target: the prior's Bernoulli parameter in ``(0, 1)``; broadcasts against ``gate``.
      eps: clipping margin; default ``jnp.finfo(dtype).eps`` of the compute dtype (float32, or
        float64 under x64).

    Returns:
      KL per element, same shape as ``gate``, float32.

    Example:
      >>> import jax.numpy as jnp
      >>> print(jnp.round(gate_prior(jnp.array([0.5, 0.0, 1.0, 0.9])), 4))  # log 2 = 0.6931
      [0.     0.6931 0.6931 0.3681]

    References:
      Miličević & Grbić, arXiv:2508.19896, 2025 (the gate); Kullback & Leibler, "On Information
      and Sufficiency", Ann. Math. Statist. 1951.
    """
    if isinstance(target, numbers.Real) and not 0.0 < float(target) < 1.0:
        raise ValueError(f"gate_prior: target must be in (0, 1), got {target}")
    gate = jnp.asarray(gate)
    dtype = compute_dtype(gate)
    g = gate.astype(dtype)
    t = jnp.asarray(target, dtype)
    eps = jnp.finfo(dtype).eps if eps is None else eps
    g_safe = jnp.clip(g, eps, 1.0 - eps)
    return g * (jnp.log(g_safe) - jnp.log(t)) + (1.0 - g) * (jnp.log1p(-g_safe) - jnp.log1p(-t))


def gate_hypergradient(
    grad_ce_next: PyTree, grad_reg_prev: PyTree, *, learning_rate: float | ArrayLike
) -> Array:
    """One-step hypergradient of the next CE loss w.r.t. the gate: ``−η ⟨g_CE,t+1, g_R,t⟩``.

    Under a plain-SGD step ``θ_{t+1} = θ_t − η (g_CE,t + ν_t g_R,t + …)``, the chain rule gives
    ``dL_CE,t+1/dν_t = ⟨∇L_CE(θ_{t+1}), dθ_{t+1}/dν_t⟩ = −η ⟨g_CE,t+1, g_R,t⟩``
    (docs/method.md, "How φ learns"; with momentum this is the usual one-step approximation). A
    positive value means that opening the gate raised the next loss. Products are formed
    elementwise and summed in float32 (float64 for float64 inputs), never via a reduced-precision
    matmul.

    Args:
      grad_ce_next: g_CE,t+1, a pytree of arrays (e.g. the CE gradient w.r.t. the backbone params).
      grad_reg_prev: g_R,t, a pytree with the same structure and leaf shapes (gradient of the
        ungated regulariser sum λ_hebb·R_Hebb + λ_ewc·R_EWC at step t).
      learning_rate: η of the main optimiser at step t (Python float or traced scalar).

    Returns:
      Scalar float32 hypergradient.

    Raises:
      ValueError: if the two pytrees differ in structure or leaf shapes.

    Example:
      >>> import jax.numpy as jnp
      >>> g_ce = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
      >>> g_r = {"w": jnp.array([0.5, -1.0]), "b": jnp.array(2.0)}
      >>> print(f"{gate_hypergradient(g_ce, g_r, learning_rate=0.1):.4f}")  # −0.1 · (0.5 − 2 + 6)
      -0.4500

    References:
      Baydin et al., "Online Learning Rate Adaptation with Hypergradient Descent", ICLR 2018 (the
      one-step hypergradient); Miličević & Grbić, arXiv:2508.19896, 2025 (the gate).
    """
    check_same_structure(
        "gate_hypergradient", grad_ce_next=grad_ce_next, grad_reg_prev=grad_reg_prev
    )
    leaves_a = jax.tree.leaves(grad_ce_next)
    leaves_b = jax.tree.leaves(grad_reg_prev)
    dtype = compute_dtype(*leaves_a, *leaves_b) if leaves_a else jnp.dtype(jnp.float32)
    dot = jnp.zeros((), dtype)
    for a, b in zip(leaves_a, leaves_b, strict=True):
        dot = dot + jnp.sum(jnp.asarray(a).astype(dtype) * jnp.asarray(b).astype(dtype))
    return -jnp.asarray(learning_rate, dtype) * dot
