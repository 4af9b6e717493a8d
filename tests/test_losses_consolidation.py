"""Tests of nm_hebb_jax.losses.consolidation: the EWC penalty and the normalised Fisher."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nm_hebb_jax.losses import ewc_penalty, normalize_fisher

# Jitted once per input shape (eager op-by-op dispatch would compile every primitive separately).
_ewc = jax.jit(ewc_penalty, static_argnames=("normalize",))

SHAPES = {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "head": [(5, 2), (2,)]}


def _tree(rng, scale=1.0, positive=False):
    def leaf(shape):
        x = rng.normal(size=shape) * scale
        return (np.abs(x) if positive else x).astype(np.float32)

    return jax.tree.map(leaf, SHAPES, is_leaf=lambda s: isinstance(s, tuple))


def _np_ewc(params, anchor, fisher, normalize):
    flat = lambda t: np.concatenate(
        [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)]
    )
    p, a, f = flat(params), flat(anchor), flat(fisher)
    if normalize:
        f = f / f.mean() if f.mean() > 0 else np.zeros_like(f)
    return np.mean(f * (p - a) ** 2)


def test_ewc_hand_computed():
    # drift [1, 2], F = [1, 3]: normalised Σ F d² / Σ F = (1 + 12) / 4 = 3.25;
    # unnormalised mean F d² = (1 + 12) / 2 = 6.5.
    params, anchor, fisher = (
        {"w": jnp.array([1.0, 2.0])},
        {"w": jnp.zeros(2)},
        {"w": jnp.array([1.0, 3.0])},
    )
    np.testing.assert_allclose(ewc_penalty(params, anchor, fisher), 3.25, rtol=1e-7)  # eager
    np.testing.assert_allclose(_ewc(params, anchor, fisher, normalize=False), 6.5, rtol=1e-7)


@pytest.mark.parametrize("normalize", [True, False])
def test_ewc_matches_numpy_under_jit(normalize):
    rng = np.random.default_rng(0)
    params, anchor, fisher = _tree(rng), _tree(rng), _tree(rng, 0.01, positive=True)
    out = _ewc(params, anchor, fisher, normalize=normalize)
    assert out.shape == () and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _np_ewc(params, anchor, fisher, normalize), rtol=1e-5)


def test_ewc_zero_at_anchor_value_and_gradient():
    rng = np.random.default_rng(1)
    anchor, fisher = _tree(rng), _tree(rng, positive=True)
    for normalize in (True, False):
        f = jax.jit(functools.partial(ewc_penalty, normalize=normalize))
        value, grad = jax.value_and_grad(f)(anchor, anchor, fisher)
        assert float(value) == 0.0
        for g in jax.tree.leaves(grad):
            np.testing.assert_array_equal(g, 0.0)


def test_ewc_zero_fisher_gives_exact_zero_and_finite_gradients():
    rng = np.random.default_rng(2)
    params, anchor = _tree(rng), _tree(rng)
    zeros = jax.tree.map(np.zeros_like, params)
    f = jax.jit(lambda p, fi: ewc_penalty(p, anchor, fi))
    value, (g_params, g_fisher) = jax.value_and_grad(f, argnums=(0, 1))(params, zeros)
    assert float(value) == 0.0
    for g in jax.tree.leaves(g_params):
        np.testing.assert_array_equal(g, 0.0)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g_fisher))


def test_ewc_gradients():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
        params, anchor, fisher = to64(_tree(rng)), to64(_tree(rng)), to64(_tree(rng, positive=True))
        f = jax.jit(lambda p: ewc_penalty(p, anchor, fisher))
        check_grads(f, (params,), order=2, modes=("rev",))
        # d/dθ_i = 2 F_i (θ_i − θ*_i) / Σ F.
        total = sum(float(jnp.sum(x)) for x in jax.tree.leaves(fisher))
        grad = jax.jit(jax.grad(ewc_penalty))(params, anchor, fisher)
        expected = jax.tree.map(lambda p, a, f: 2 * f * (p - a) / total, params, anchor, fisher)
        for g, e in zip(jax.tree.leaves(grad), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-10)


def test_normalize_fisher_and_equivalence():
    rng = np.random.default_rng(4)
    params, anchor, fisher = _tree(rng), _tree(rng), _tree(rng, positive=True)
    normalized = jax.jit(normalize_fisher)(fisher)
    leaves = jax.tree.leaves(normalized)
    np.testing.assert_allclose(np.mean(np.concatenate([np.ravel(x) for x in leaves])), 1.0, 1e-6)
    np.testing.assert_allclose(
        _ewc(params, anchor, normalized, normalize=False),
        _ewc(params, anchor, fisher),
        rtol=1e-5,
    )
    zeros = jax.jit(normalize_fisher)(jax.tree.map(np.zeros_like, fisher))
    assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(zeros))


def test_ewc_structure_errors():
    p = {"w": jnp.ones(2), "b": jnp.ones(())}
    with pytest.raises(ValueError, match="same pytree structure"):
        ewc_penalty(p, {"w": jnp.ones(2)}, p)
    with pytest.raises(ValueError, match=r"\['w'\] has shape \(3,\)"):
        ewc_penalty(p, p, {"w": jnp.ones(3), "b": jnp.ones(())})
