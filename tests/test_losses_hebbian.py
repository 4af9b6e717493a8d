"""Tests of nm_hebb_jax.losses.hebbian: the NM-Hebb regulariser R_Hebb."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nm_hebb_jax.losses import hebbian_regularizer


def _np_hebb(activation, kernel):
    a = np.asarray(activation, np.float64)
    w = np.asarray(kernel, np.float64)
    a_bar = a.reshape(-1, a.shape[-1]).mean(0)
    w_bar = w.reshape(-1, w.shape[-1]).mean(0)
    return np.mean((a_bar - w_bar) ** 2)


def _random(seed=0, c_in=3):
    rng = np.random.default_rng(seed)
    activation = rng.normal(loc=0.5, size=(2, 3, 3, 4)).astype(np.float32)
    kernel = rng.normal(scale=0.3, size=(3, 3, c_in, 4)).astype(np.float32)
    return activation, kernel


def test_hand_computed():
    # Channel means of the activation: ā = [1, 3]; kernel means: w̄ = [0, 0.5] (channel 1 is half
    # ones, half zeros). R = ((1 − 0)² + (3 − 0.5)²) / 2 = (1 + 6.25) / 2 = 3.625.
    activation = jnp.ones((2, 2, 2, 2)) * jnp.array([1.0, 3.0])
    kernel = jnp.zeros((1, 2, 1, 2)).at[0, 0, 0, 1].set(1.0)
    np.testing.assert_allclose(hebbian_regularizer(activation, kernel), 3.625, rtol=1e-7)


@pytest.mark.parametrize("c_in", [3, 1])  # 1 = depthwise kernel
def test_matches_numpy_under_jit(c_in):
    activation, kernel = _random(1, c_in)
    expected = _np_hebb(activation, kernel)
    np.testing.assert_allclose(hebbian_regularizer(activation, kernel), expected, rtol=1e-5)
    for mode in ("none", "activations", "weights"):
        f = jax.jit(functools.partial(hebbian_regularizer, stop_gradient=mode))
        out = f(activation, kernel)
        assert out.shape == () and out.dtype == jnp.float32
        np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_gradient_closed_form_and_check_grads():
    with jax.enable_x64(True):
        activation, kernel = (jnp.asarray(x, jnp.float64) for x in _random(2))
        f = jax.jit(hebbian_regularizer)
        check_grads(f, (activation, kernel), order=2, modes=("fwd", "rev"))
        # dR/da_{nhwf} = 2 (ā_f − w̄_f) / (C·N·H·W); dR/dw_{ijcf} = −2 (ā_f − w̄_f) / (C·kh·kw·C_in).
        diff = np.asarray(activation).mean((0, 1, 2)) - np.asarray(kernel).mean((0, 1, 2))
        g_a, g_w = jax.grad(hebbian_regularizer, argnums=(0, 1))(activation, kernel)
        np.testing.assert_allclose(g_a, np.broadcast_to(2 * diff / (4 * 18), g_a.shape), 1e-12)
        np.testing.assert_allclose(g_w, np.broadcast_to(-2 * diff / (4 * 27), g_w.shape), 1e-12)


def test_stop_gradient_modes_zero_exactly_the_detached_side():
    activation, kernel = _random(3)
    grads = {
        mode: jax.jit(
            jax.grad(functools.partial(hebbian_regularizer, stop_gradient=mode), argnums=(0, 1))
        )(activation, kernel)
        for mode in ("none", "activations", "weights")
    }
    g_a, g_w = grads["none"]
    assert np.all(np.abs(g_a) > 0) and np.all(np.abs(g_w) > 0)
    np.testing.assert_array_equal(grads["activations"][0], 0.0)
    np.testing.assert_array_equal(grads["activations"][1], g_w)
    np.testing.assert_array_equal(grads["weights"][0], g_a)
    np.testing.assert_array_equal(grads["weights"][1], 0.0)


def test_bfloat16_inputs_accumulate_in_float32():
    # Activations alternate 1 and 1 + 1/128 (both exact in bfloat16); their mean 1 + 1/256 is not
    # representable in bfloat16 (spacing 1/128 near 1), so only float32 means give
    # R = (1 + 1/256)² = 1.0078277587890625 (w̄ = 0).
    activation = (1.0 + (np.arange(4096) % 2) / 128).reshape(4, 32, 32, 1)
    low_a = jnp.asarray(activation, jnp.bfloat16)
    out = hebbian_regularizer(low_a, jnp.zeros((3, 3, 2, 1), jnp.bfloat16))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, 1.0078277587890625, rtol=1e-7)


def test_errors():
    activation, kernel = _random(4)
    with pytest.raises(ValueError, match="stop_gradient must be one of"):
        hebbian_regularizer(activation, kernel, stop_gradient="both")
    with pytest.raises(ValueError, match=r"\(2, 3, 3, 4\).*\(3, 3, 3, 5\)"):
        hebbian_regularizer(activation, np.zeros((3, 3, 3, 5)))
