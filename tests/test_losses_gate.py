"""Tests of nm_hebb_jax.losses.gate: the Bernoulli KL prior and the one-step hypergradient."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nm_hebb_jax.losses import gate_hypergradient, gate_prior


def _np_kl(g, t):
    g = np.asarray(g, np.float64)
    return g * np.log(g / t) + (1 - g) * np.log((1 - g) / (1 - t))


def test_gate_prior_hand_computed():
    # g = 0.9, t = 0.5: 0.9 ln 1.8 + 0.1 ln 0.2 = 0.529008 − 0.160944 = 0.368064.
    # g = 0.5, t = 0.2: 0.5 ln 2.5 + 0.5 ln 0.625 = 0.458145 − 0.235002 = 0.223144.
    np.testing.assert_allclose(gate_prior(0.9), 0.368064, rtol=1e-5)
    np.testing.assert_allclose(gate_prior(0.5, target=0.2), 0.223144, rtol=1e-5)


def test_gate_prior_zero_at_target_and_symmetric():
    for t in (0.1, 0.5, 0.73):
        assert float(gate_prior(jnp.float32(t), target=t)) == 0.0
    g = jnp.linspace(0.0, 1.0, 21)
    np.testing.assert_allclose(gate_prior(g), gate_prior(1.0 - g), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        gate_prior(g, target=0.3), gate_prior(1.0 - g, target=0.7), rtol=1e-5, atol=1e-7
    )


def test_gate_prior_matches_numpy_and_keeps_shape_under_jit():
    rng = np.random.default_rng(0)
    g = rng.uniform(0.01, 0.99, size=(3, 4)).astype(np.float32)
    t = rng.uniform(0.05, 0.95, size=(4,)).astype(np.float32)
    out = jax.jit(lambda g, t: gate_prior(g, target=t))(g, t)
    assert out.shape == (3, 4) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _np_kl(g, t), rtol=1e-5, atol=1e-7)
    assert gate_prior(jnp.float32(0.3)).shape == ()


def test_gate_prior_finite_at_zero_and_one():
    g = jnp.array([0.0, 1.0])
    value = gate_prior(g, target=0.2)
    np.testing.assert_allclose(value, [-np.log(0.8), -np.log(0.2)], rtol=1e-6)
    grad = jax.grad(lambda g: gate_prior(g, target=0.2).sum())(g)
    assert np.all(np.isfinite(grad))
    assert grad[0] < 0 < grad[1]  # both push back towards the target


def test_gate_prior_gradients():
    with jax.enable_x64(True):
        g = jnp.array([0.1, 0.4, 0.8])
        f = jax.jit(functools.partial(gate_prior, target=0.3))
        check_grads(f, (g,), order=2, modes=("fwd", "rev"))
        # dKL/dg = logit(g) − logit(t).
        logit = lambda p: np.log(p / (1 - p))
        grad = jax.grad(lambda g: f(g).sum())(g)
        np.testing.assert_allclose(grad, logit(np.asarray(g)) - logit(0.3), rtol=1e-10)


def test_gate_prior_errors():
    with pytest.raises(ValueError, match="target"):
        gate_prior(0.5, target=1.0)


def test_gate_hypergradient_hand_computed_and_numpy():
    # −0.1 · (1·0.5 + 2·(−1) + 3·2) = −0.1 · 4.5 = −0.45.
    g_ce = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    g_r = {"w": jnp.array([0.5, -1.0]), "b": jnp.array(2.0)}
    np.testing.assert_allclose(gate_hypergradient(g_ce, g_r, learning_rate=0.1), -0.45, 1e-6)
    rng = np.random.default_rng(1)
    shapes = {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "dense": [(5, 2), (2,)]}
    a = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes, is_leaf=_is_shape)
    b = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes, is_leaf=_is_shape)
    expected = -0.05 * sum(
        np.sum(np.asarray(x, np.float64) * y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    out = jax.jit(functools.partial(gate_hypergradient, learning_rate=0.05))(a, b)
    assert out.shape == () and out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # A traced learning rate (schedule) and bfloat16 leaves also give float32.
    lr_traced = jax.jit(lambda lr: gate_hypergradient(a, b, learning_rate=lr))(0.05)
    np.testing.assert_allclose(lr_traced, expected, rtol=1e-5)
    low = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), a)
    assert gate_hypergradient(low, low, learning_rate=1.0).dtype == jnp.float32


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def test_gate_hypergradient_is_the_derivative_of_the_next_loss():
    # Quadratic model: L_CE(θ) = ½‖Aθ − b‖², R(θ) = ½‖θ − c‖². One plain-SGD step
    # θ1(ν) = θ0 − η (∇L_CE(θ0) + ν ∇R(θ0)); the hypergradient must equal d L_CE(θ1(ν)) / dν.
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        a_mat, b, c = rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=3)
        ce = lambda th: 0.5 * jnp.sum((a_mat @ th["x"] - b) ** 2)
        reg = lambda th: 0.5 * jnp.sum((th["x"] - c) ** 2)
        theta0, lr, nu = {"x": jnp.asarray(rng.normal(size=3))}, 0.07, 0.4

        def step(nu):
            g = jax.tree.map(lambda p, q: p + nu * q, jax.grad(ce)(theta0), jax.grad(reg)(theta0))
            return jax.tree.map(lambda t, d: t - lr * d, theta0, g)

        @jax.jit
        def both(nu):
            exact = jax.grad(lambda v: ce(step(v)))(nu)
            g_ce, g_r = jax.grad(ce)(step(nu)), jax.grad(reg)(theta0)
            return exact, gate_hypergradient(g_ce, g_r, learning_rate=lr)

        exact, hyper = both(nu)
        np.testing.assert_allclose(hyper, exact, rtol=1e-10)


def test_gate_hypergradient_structure_errors():
    a = {"w": jnp.ones(2), "b": jnp.ones(())}
    with pytest.raises(ValueError, match="same pytree structure"):
        gate_hypergradient(a, {"w": jnp.ones(2)}, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"\['w'\].*shape"):
        gate_hypergradient(a, {"w": jnp.ones(3), "b": jnp.ones(())}, learning_rate=0.1)
