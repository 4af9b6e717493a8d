"""Tests of nm_hebb_jax.losses.hebbian_rules: Miconi's Hebbian surrogate losses and updates.

``check_grads`` does not apply here: the surrogate's value is ``−½ Σ y²`` (constant in the kernel)
while its gradient is, by construction, the Hebbian update; the contract tested instead is
``−∂L/∂kernel == hebbian_update`` and ``hebbian_update ==`` an explicit NumPy loop.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nm_hebb_jax.losses import hebbian_rule_loss, hebbian_update

RULES = ("hebb", "instar", "oja")
# (stride, padding): strides 1 and 2, an anisotropic stride, and SAME padding.
CONFIGS = [(1, "VALID"), (2, "VALID"), (1, "SAME"), ((2, 1), "SAME")]


def _out_size(size, k, s, padding):
    return math.ceil(size / s) if padding == "SAME" else (size - k) // s + 1


def _np_update(x, w, y, rule, stride, padding):
    """Explicit loop over batch, output positions and filters."""
    x, w, y = (np.asarray(a, np.float64) for a in (x, w, y))
    kh, kw, _, c_out = w.shape
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    if padding == "SAME":  # lax/TF convention: the extra padding row/column goes at the end
        pads = []
        for size, k, s in ((x.shape[1], kh, sh), (x.shape[2], kw, sw)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    update = np.zeros_like(w)
    for b in range(y.shape[0]):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                patch = x[b, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
                for o in range(c_out):
                    post = y[b, i, j, o]
                    if rule == "hebb":
                        update[..., o] += post * patch
                    elif rule == "instar":
                        update[..., o] += post * (patch - w[..., o])
                    else:
                        update[..., o] += post * (patch - post * w[..., o])
    return update


def _random(stride, padding, seed=0):
    # A rectangular 2x3 kernel and unequal H, W catch any mix-up of the patch feature order.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    kernel = rng.normal(scale=0.5, size=(2, 3, 3, 4)).astype(np.float32)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    out = (2, _out_size(7, 2, sh, padding), _out_size(6, 3, sw, padding), 4)
    y = rng.normal(size=out).astype(np.float32)  # graded, signed post-synaptic signal
    return x, kernel, y


_grad = jax.jit(
    jax.grad(hebbian_rule_loss, argnums=1), static_argnames=("rule", "stride", "padding")
)
_update = jax.jit(hebbian_update, static_argnames=("rule", "stride", "padding"))


def test_hand_computed():
    # One 2x2 patch of ones, w = 0.5 everywhere, y = 2:
    # hebb y·x = 2; instar y·(x − w) = 2·0.5 = 1; oja y·(x − y·w) = 2·(1 − 1) = 0.
    x, kernel, y = jnp.ones((1, 2, 2, 1)), jnp.full((2, 2, 1, 1), 0.5), jnp.full((1, 1, 1, 1), 2.0)
    for rule, value in (("hebb", 2.0), ("instar", 1.0), ("oja", 0.0)):
        np.testing.assert_allclose(_update(x, kernel, y, rule=rule), value, atol=1e-7)
        np.testing.assert_allclose(-_grad(x, kernel, y, rule=rule), value, atol=1e-7)
    # The loss value is −½ Σ y² = −2 whatever the rule.
    np.testing.assert_allclose(hebbian_rule_loss(x, kernel, y, rule="oja"), -2.0)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("stride", "padding"), CONFIGS)
def test_gradient_equals_update_equals_numpy_loop(rule, stride, padding):
    x, kernel, y = _random(stride, padding)
    update = _update(x, kernel, y, rule=rule, stride=stride, padding=padding)
    assert update.shape == kernel.shape and update.dtype == jnp.float32
    grad = _grad(x, kernel, y, rule=rule, stride=stride, padding=padding)
    scale = np.abs(update).max()
    np.testing.assert_allclose(-grad, update, rtol=1e-5, atol=1e-5 * scale)
    expected = _np_update(x, kernel, y, rule, stride, padding)
    np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-5 * scale)


def test_loss_value_jit_and_constant_post_synaptic_signal():
    x, kernel, y = _random(1, "VALID", seed=1)
    for rule in RULES:
        f = jax.jit(functools.partial(hebbian_rule_loss, rule=rule))
        np.testing.assert_allclose(f(x, kernel, y), -0.5 * np.sum(y.astype(np.float64) ** 2), 1e-5)
        g_y = jax.grad(f, argnums=2)(x, kernel, y)
        np.testing.assert_array_equal(g_y, 0.0)  # y is treated as a constant


def test_oja_equals_instar_for_binary_post_synaptic_signal():
    # docs/method.md: with a binarised y, y² = y, so Oja's update equals instar's.
    x, kernel, y = _random(1, "VALID", seed=2)
    y = (y > 0.5).astype(np.float32)
    np.testing.assert_allclose(
        _update(x, kernel, y, rule="oja", stride=1, padding="VALID"),
        _update(x, kernel, y, rule="instar", stride=1, padding="VALID"),
        rtol=1e-6,
    )


def test_errors():
    x, kernel, y = _random(1, "VALID")
    for fn in (hebbian_rule_loss, hebbian_update):
        with pytest.raises(ValueError, match=r"valid rules are \('hebb', 'instar', 'oja'\)"):
            fn(x, kernel, y, rule="bcm")
        with pytest.raises(ValueError, match="conv output has shape"):
            fn(x, kernel, y[:, 1:], rule="hebb")
        with pytest.raises(ValueError, match="kernel"):
            fn(x, kernel[:, :, :2], y, rule="hebb")
