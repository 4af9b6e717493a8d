"""Tests of nm_hebb_jax.losses.classification: cross_entropy and accuracy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nm_hebb_jax.losses import accuracy, cross_entropy

# Jitted once per input shape (eager op-by-op dispatch would compile every primitive separately).
_ce = jax.jit(cross_entropy, static_argnames=("label_smoothing",))
_acc = jax.jit(accuracy)


def _np_cross_entropy(logits, labels, alpha=0.0):
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    targets = (1.0 - alpha) * np.eye(k)[labels] + alpha / k
    return -(targets * log_p).sum(-1)


def _random(seed=0, n=6, k=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)).astype(np.float32) * 3, rng.integers(0, k, size=n)


def test_cross_entropy_hand_computed():
    # Row 0: softmax([2, 0]) -> p_0 = 1/(1+e^-2), loss = log(1 + e^-2) = 0.126928.
    # Row 1: uniform over 2 classes -> log 2 = 0.693147.
    loss = _ce(jnp.array([[2.0, 0.0], [0.0, 0.0]]), jnp.array([0, 1]))
    np.testing.assert_allclose(loss, [np.log1p(np.exp(-2.0)), np.log(2.0)], rtol=1e-6)
    # Smoothing alpha = 0.5, K = 2: targets [0.75, 0.25]; logits [0, ln 3] -> p = [1/4, 3/4];
    # loss = 0.75 ln 4 + 0.25 ln(4/3) = 1.039721 + 0.071921 = 1.111641.
    smoothed = _ce(jnp.array([[0.0, np.log(3.0)]]), jnp.array([0]), label_smoothing=0.5)
    np.testing.assert_allclose(smoothed, [1.111641], rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0])
def test_cross_entropy_matches_numpy(alpha):
    logits, labels = _random()
    loss = _ce(logits, labels, label_smoothing=alpha)
    assert loss.shape == (6,) and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, _np_cross_entropy(logits, labels, alpha), rtol=1e-5)


def test_cross_entropy_jit_and_traced_smoothing():
    logits, labels = _random(1)
    eager = cross_entropy(logits, labels, label_smoothing=0.1)
    np.testing.assert_allclose(_ce(logits, labels, label_smoothing=0.1), eager, rtol=1e-6)
    # A traced smoothing value (a schedule) takes the smoothed-targets path.
    traced = jax.jit(lambda a: cross_entropy(logits, labels, label_smoothing=a))
    np.testing.assert_allclose(traced(0.1), eager, rtol=1e-6)
    np.testing.assert_allclose(traced(0.0), _ce(logits, labels), rtol=1e-5)


def test_cross_entropy_mask_equals_slice_and_ignores_garbage():
    logits, labels = _random(2)
    where = np.array([True, False, True, True, False, True])
    bad_logits = logits.copy()
    bad_logits[~where] = np.nan  # padded rows may hold anything
    bad_labels = labels.copy()
    bad_labels[~where] = 99  # even out-of-range labels
    for alpha in (0.0, 0.2):
        loss = _ce(bad_logits, bad_labels, label_smoothing=alpha, where=where)
        sliced = _ce(logits[where], labels[where], label_smoothing=alpha)
        np.testing.assert_allclose(loss[where], sliced, rtol=1e-6)
        np.testing.assert_array_equal(loss[~where], 0.0)
        grad = jax.jit(
            jax.grad(
                lambda z, a=alpha: cross_entropy(
                    z, bad_labels, label_smoothing=a, where=where
                ).sum()
            )
        )(jnp.asarray(bad_logits))
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad[~where], 0.0)


def test_cross_entropy_vmap_equals_batch():
    logits, labels = _random(3, n=12)
    batched = _ce(logits, labels)
    vmapped = jax.jit(jax.vmap(cross_entropy))(logits.reshape(3, 4, 5), labels.reshape(3, 4))
    np.testing.assert_allclose(vmapped.reshape(-1), batched, rtol=1e-6)


def test_cross_entropy_gradients():
    with jax.enable_x64(True):
        logits, labels = _random(4)
        logits = jnp.asarray(logits, jnp.float64)
        f = jax.jit(functools.partial(cross_entropy, labels=labels, label_smoothing=0.3))
        check_grads(f, (logits,), order=2, modes=("fwd", "rev"))
        check_grads(jax.jit(functools.partial(cross_entropy, labels=labels)), (logits,), order=1)
        # Closed form: d loss_n / d logits_n = softmax(logits_n) − targets_n.
        grad = jax.jit(jax.grad(lambda z: f(z).sum()))(logits)
        targets = 0.7 * np.eye(5)[labels] + 0.3 / 5
        np.testing.assert_allclose(grad, jax.nn.softmax(logits) - targets, rtol=1e-10)


def test_cross_entropy_bfloat16_computes_in_float32():
    logits, labels = _random(5)
    low = jnp.asarray(logits, jnp.bfloat16)
    loss = _ce(low, labels)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, _np_cross_entropy(np.asarray(low, np.float64), labels), 1e-5)


def test_cross_entropy_errors():
    with pytest.raises(ValueError, match="labels shape"):
        cross_entropy(jnp.zeros((3, 4)), jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(jnp.zeros((3, 4)), jnp.zeros((3,), jnp.int32), label_smoothing=1.5)
    with pytest.raises(TypeError, match="integer"):
        cross_entropy(jnp.zeros((3, 4)), jnp.zeros((3,)))
    with pytest.raises(ValueError, match="where"):
        cross_entropy(jnp.zeros((3, 4)), jnp.zeros((3,), jnp.int32), where=jnp.ones(4, bool))


def test_accuracy_hand_computed_and_mask():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [1.0, 1.0]])
    labels = jnp.array([0, 1, 1, 0])  # the tie in row 3 goes to class 0
    np.testing.assert_array_equal(accuracy(logits, labels), [1.0, 1.0, 0.0, 1.0])  # eager
    where = jnp.array([True, False, True, True])
    masked = _acc(logits, labels, where=where)
    np.testing.assert_array_equal(masked, [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(masked[where], _acc(logits[where], labels[where]))
    assert masked.dtype == jnp.float32


def test_accuracy_matches_numpy_under_jit_and_vmap():
    logits, labels = _random(6, n=12)
    expected = (np.argmax(logits, -1) == labels).astype(np.float32)
    np.testing.assert_array_equal(_acc(logits, labels), expected)
    vmapped = jax.jit(jax.vmap(accuracy))(logits.reshape(3, 4, 5), labels.reshape(3, 4))
    np.testing.assert_array_equal(vmapped.reshape(-1), expected)
