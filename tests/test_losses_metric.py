"""Tests of nm_hebb_jax.losses.metric: pairwise contrastive, center and supervised contrastive."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from nm_hebb_jax.losses import center_loss, pairwise_contrastive_loss, supervised_contrastive_loss

# Jitted once per input shape (eager op-by-op dispatch would compile every primitive separately).
_pair = jax.jit(pairwise_contrastive_loss, static_argnames=("normalize",))
_pair_grad = jax.jit(jax.grad(pairwise_contrastive_loss), static_argnames=("normalize",))
_supcon = jax.jit(supervised_contrastive_loss)
_supcon_grad = jax.jit(jax.grad(supervised_contrastive_loss))
_center = jax.jit(center_loss)


def _normalize(e, eps=1e-12):
    e = np.asarray(e, np.float64)
    return e / np.sqrt((e**2).sum(-1, keepdims=True) + eps)


def _np_pairwise(e, y, margin=1.0, normalize=True, eps=1e-12):
    z = _normalize(e, eps) if normalize else np.asarray(e, np.float64)
    y = np.asarray(y)
    sq = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    hinge = np.maximum(margin - np.sqrt(sq + eps), 0.0) ** 2
    same = y[:, None] == y[None, :]
    pos, neg = same & ~np.eye(len(y), dtype=bool), ~same
    return (sq[pos].mean() if pos.any() else 0.0) + (hinge[neg].mean() if neg.any() else 0.0)


def _np_supcon(e, y, temperature):
    z = _normalize(e)
    s = z @ z.T / temperature
    losses = []
    for i in range(len(y)):
        pos = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if not pos:
            continue
        log_denom = np.log(sum(np.exp(s[i, a]) for a in range(len(y)) if a != i))
        losses.append(-np.mean([s[i, p] - log_denom for p in pos]))
    return np.mean(losses) if losses else 0.0


def _random(seed=0, n=10, d=5, classes=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, classes, n)


def _finite(*arrays):
    return all(bool(np.all(np.isfinite(np.asarray(a)))) for a in arrays)


# ----------------------------------------------------------------------------- pairwise contrastive


def test_pairwise_hand_computed():
    e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([0, 0, 1])
    # Positives (0,1) coincide: d² = 0. Negatives are orthogonal: d = √2 > m = 1 -> hinge 0.
    np.testing.assert_allclose(_pair(e, labels), 0.0, atol=1e-7)
    # m = 2: every negative costs (2 − √2)² = 0.343146.
    np.testing.assert_allclose(_pair(e, labels, margin=2.0), (2 - np.sqrt(2)) ** 2, rtol=1e-5)
    # One orthogonal positive pair, no negative: d² = 2 (the negative part contributes 0).
    np.testing.assert_allclose(_pair(e[1:], jnp.array([4, 4])), 2.0, rtol=1e-6)
    # normalize=False: raw [3, 0] vs [0, 4], positives -> d² = 25.
    raw = jnp.array([[3.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(_pair(raw, jnp.array([1, 1]), normalize=False), 25.0, rtol=1e-6)


@pytest.mark.parametrize(("margin", "normalize"), [(1.0, True), (0.7, True), (3.0, False)])
def test_pairwise_matches_numpy_under_jit(margin, normalize):
    e, y = _random(1)
    out = _pair(e, y, margin=margin, normalize=normalize)
    assert out.shape == () and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _np_pairwise(e, y, margin, normalize), rtol=1e-5)
    # Eager (un-jitted) evaluation agrees too.
    eager = pairwise_contrastive_loss(e, y, margin=margin, normalize=normalize)
    np.testing.assert_allclose(eager, out, rtol=1e-6)


def test_pairwise_permutation_invariant():
    e, y = _random(2)
    perm = np.random.default_rng(0).permutation(len(y))
    np.testing.assert_allclose(_pair(e[perm], y[perm]), _pair(e, y), rtol=1e-6)


def test_pairwise_degenerate_batches_are_finite():
    e, _ = _random(3, n=4)
    no_positive, no_negative, mixed = np.arange(4), np.zeros(4, int), np.array([0, 0, 1, 1])
    for labels in (no_positive, no_negative):
        value, grad = _pair(e, labels), _pair_grad(e, labels)
        assert _finite(value, grad)
        np.testing.assert_allclose(value, _np_pairwise(e, labels), rtol=1e-5)
    # Identical embeddings (mixed labels) and a zero embedding.
    same = np.tile(e[:1], (4, 1))
    zero_row = e * np.array([[0.0], [1], [1], [1]], np.float32)
    for emb in (same, zero_row):
        assert _finite(_pair(emb, mixed), _pair_grad(emb, mixed))
    np.testing.assert_allclose(_pair(same, mixed), 1.0, rtol=1e-5)  # negatives at d ≈ 0 cost m²
    # A single example has no pair at all.
    single = e[:1]
    assert float(_pair(single, np.array([0]))) == 0.0
    assert _finite(_pair_grad(single, np.array([0])))


def test_pairwise_mask_equals_slice_and_blocks_gradient():
    e, y = _random(4)
    where = np.ones(len(y), bool)
    where[[2, 7]] = False
    bad = e.copy()
    bad[~where] = np.nan
    np.testing.assert_allclose(
        _pair(bad, y, where=where, margin=1.2), _pair(e[where], y[where], margin=1.2), rtol=1e-6
    )
    grad = _pair_grad(bad, y, where=where, margin=1.2)
    assert _finite(grad)
    np.testing.assert_array_equal(grad[~where], 0.0)


def test_pairwise_gradients():
    with jax.enable_x64(True):
        e, y = _random(5, n=6, d=3)
        e = jnp.asarray(e, jnp.float64)
        f = jax.jit(functools.partial(pairwise_contrastive_loss, labels=y, margin=1.5))
        check_grads(f, (e,), order=2, modes=("rev",))
        f_raw = jax.jit(functools.partial(pairwise_contrastive_loss, labels=y, normalize=False))
        check_grads(f_raw, (e,), order=1, modes=("rev",))


# ----------------------------------------------------------------------------- center loss


def test_center_loss_hand_computed_and_numpy():
    z = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    centers = jnp.array([[1.0, 0.0], [3.0, 4.0]])
    # ½‖[0, 2]‖² = 2 and ½‖[−3, −4]‖² = 12.5.
    np.testing.assert_allclose(_center(z, jnp.array([0, 1]), centers), [2.0, 12.5])
    e, y = _random(6, n=8)
    c = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    out = _center(e, y, c)
    assert out.shape == (8,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, 0.5 * ((e - c[y]) ** 2).sum(-1), rtol=1e-6)


def test_center_loss_mask_vmap_and_gradients():
    e, y = _random(7, n=8)
    c = np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32)
    where = np.array([1, 1, 0, 1, 0, 1, 1, 1], bool)
    bad = e.copy()
    bad[~where] = np.inf
    out = _center(bad, y, c, where=where)
    np.testing.assert_array_equal(out[~where], 0.0)
    np.testing.assert_allclose(out[where], _center(e, y, c)[where], rtol=1e-6)
    g_e, g_c = jax.jit(
        jax.grad(lambda x, cc: center_loss(x, y, cc, where=where).sum(), argnums=(0, 1))
    )(jnp.asarray(bad), c)
    np.testing.assert_array_equal(g_e[~where], 0.0)
    # The centers' gradient is Σ_{i: y_i = k} (c_k − z_i) over unmasked examples.
    expected = np.stack([((c[k] - e) * ((y == k) & where)[:, None]).sum(0) for k in range(3)])
    np.testing.assert_allclose(g_c, expected, rtol=1e-5, atol=1e-6)
    vmapped = jax.jit(jax.vmap(center_loss, in_axes=(0, 0, None)))(
        e.reshape(2, 4, 5), y.reshape(2, 4), c
    )
    np.testing.assert_allclose(vmapped.reshape(-1), _center(e, y, c), rtol=1e-6)
    with jax.enable_x64(True):
        e64, c64 = jnp.asarray(e, jnp.float64), jnp.asarray(c, jnp.float64)
        check_grads(jax.jit(lambda x, cc: center_loss(x, y, cc)), (e64, c64), order=2)


# ------------------------------------------------------------------------ supervised contrastive


def test_supcon_hand_computed():
    e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # Each anchor: one positive at cosine 1, two negatives at cosine 0 (τ = 1):
    # −log(e / (e + 2)) = log(1 + 2/e) = 0.551445.
    out = _supcon(e, jnp.array([0, 0, 1, 1]), temperature=1.0)
    np.testing.assert_allclose(out, np.log1p(2 / np.e), rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_numpy_loop_under_jit(temperature):
    e, _ = _random(8)
    y = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 1])  # class 2 is a singleton: not an anchor
    out = _supcon(e, y, temperature=temperature)
    assert out.shape == () and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _np_supcon(e, y, temperature), rtol=1e-5)
    eager = supervised_contrastive_loss(e, y, temperature=temperature)
    np.testing.assert_allclose(eager, out, rtol=1e-6)


def test_supcon_equals_optax_ntxent_with_one_positive_per_anchor():
    e, _ = _random(9)
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    ours = _supcon(e, y, temperature=0.2)
    np.testing.assert_allclose(
        ours, jax.jit(optax.losses.ntxent)(jnp.asarray(e), y, 0.2), rtol=1e-5
    )


def test_supcon_permutation_mask_and_degenerate_batches():
    e, y = _random(10)
    perm = np.random.default_rng(1).permutation(10)
    np.testing.assert_allclose(_supcon(e[perm], y[perm]), _supcon(e, y), rtol=1e-6)
    where = np.ones(10, bool)
    where[[0, 5]] = False
    bad = e.copy()
    bad[~where] = np.nan
    np.testing.assert_allclose(_supcon(bad, y, where=where), _supcon(e[where], y[where]), 1e-6)
    grad = _supcon_grad(bad, y, where=where)
    assert _finite(grad)
    np.testing.assert_array_equal(grad[~where], 0.0)
    # No positives at all -> exactly 0 with finite gradients; tiny τ, opposite and zero rows too.
    e4 = e[:4]
    assert float(_supcon(e4, np.arange(4))) == 0.0 and _finite(_supcon_grad(e4, np.arange(4)))
    pairs = np.array([0, 0, 1, 1])
    opposite = np.array([[1.0, 0, 0, 0, 0]] * 2 + [[-1.0, 0, 0, 0, 0]] * 2, np.float32)
    for emb in (e4, opposite, np.zeros((4, 5), np.float32)):
        value = _supcon(emb, pairs, temperature=0.005)
        assert _finite(value, _supcon_grad(emb, pairs, temperature=0.005))


def test_supcon_gradients():
    with jax.enable_x64(True):
        e, _ = _random(11, n=6, d=3)
        y = np.array([0, 0, 1, 1, 1, 2])
        f = jax.jit(functools.partial(supervised_contrastive_loss, labels=y, temperature=0.5))
        check_grads(f, (jnp.asarray(e, jnp.float64),), order=2, modes=("rev",))


def test_metric_errors():
    with pytest.raises(ValueError, match="expected embeddings"):
        pairwise_contrastive_loss(jnp.zeros((3, 2)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="centers"):
        center_loss(jnp.zeros((3, 2)), jnp.zeros(3, jnp.int32), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="temperature"):
        supervised_contrastive_loss(jnp.zeros((3, 2)), jnp.zeros(3, jnp.int32), temperature=0.0)
