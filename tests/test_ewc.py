"""Tests of nm_hebb_jax.train.ewc: the empirical diagonal Fisher, the EWC state, its docstrings."""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nm_hebb_jax.train import ewc as E
from nm_hebb_jax.train.ewc import fisher_diagonal


def test_docstring_examples():
    result = doctest.testmod(E, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_initial_state_is_a_zero_penalty_with_its_own_buffers():
    params = {"w": jnp.arange(3.0), "b": jnp.ones(())}
    state = E.init_ewc_state(params)
    for a, p in zip(jax.tree.leaves(state["anchor"]), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, p)
        assert a.unsafe_buffer_pointer() != p.unsafe_buffer_pointer()  # donation-safe copy
    assert all(float(jnp.sum(f)) == 0.0 for f in jax.tree.leaves(state["fisher"]))


def test_refresh_is_due_every_interval_after_the_start():
    assert [t for t in range(12) if E.refresh_due(t, 5)] == [5, 10]
    assert [t for t in range(3) if E.refresh_due(t, 1)] == [1, 2]


# fisher_diagonal on a linear softmax classifier, against closed-form per-example gradients.

D, K = 3, 4


def _softmax_ce(params, example):
    logits = example["x"] @ params["w"] + params["b"]
    return jax.nn.logsumexp(logits) - logits[example["y"]]


def _np_fisher(params, batches):
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    sq_w, sq_b, count = np.zeros_like(w), np.zeros_like(b), 0
    for batch in batches:
        for x, y in zip(np.asarray(batch["x"], np.float64), np.asarray(batch["y"]), strict=True):
            logits = x @ w + b
            p = np.exp(logits - logits.max())
            delta = p / p.sum() - np.eye(K)[y]  # d loss / d logits
            sq_w += np.outer(x, delta) ** 2  # d loss / d w = x ⊗ delta
            sq_b += delta**2
            count += 1
    return {"w": sq_w / count, "b": sq_b / count}


def _batches(rng, sizes):
    return [
        {"x": rng.normal(size=(n, D)).astype(np.float32), "y": rng.integers(0, K, n)} for n in sizes
    ]


def _params(rng):
    return {
        "w": rng.normal(size=(D, K)).astype(np.float32),
        "b": rng.normal(size=(K,)).astype(np.float32),
    }


@pytest.mark.parametrize(("sizes", "chunk_size"), [((8, 5), 4), ((7,), 16), ((6, 6), 1)])
def test_fisher_diagonal_matches_per_example_loop(sizes, chunk_size):
    rng = np.random.default_rng(5)
    params, batches = _params(rng), _batches(rng, sizes)
    fisher = fisher_diagonal(_softmax_ce, params, batches, chunk_size=chunk_size)
    expected = _np_fisher(params, batches)
    for key in ("w", "b"):
        assert fisher[key].shape == expected[key].shape and fisher[key].dtype == jnp.float32
        np.testing.assert_allclose(fisher[key], expected[key], rtol=1e-5, atol=1e-8)


def test_fisher_diagonal_is_not_the_squared_mean_gradient_and_accepts_jax_arrays():
    rng = np.random.default_rng(6)
    params, batches = _params(rng), _batches(rng, (5,))
    jax_batches = [jax.tree.map(jnp.asarray, b) for b in batches]  # device arrays, generator
    fisher = fisher_diagonal(_softmax_ce, params, (b for b in jax_batches), chunk_size=2)
    grad_fn = jax.jit(jax.grad(_softmax_ce))  # explicit per-example loop
    loop = [grad_fn(params, {"x": x, "y": y}) for x, y in zip(*batches[0].values(), strict=True)]
    expected = jax.tree.map(lambda *g: np.mean(np.square(g), axis=0), *loop)
    squared_mean = jax.tree.map(lambda *g: np.square(np.mean(g, axis=0)), *loop)
    np.testing.assert_allclose(fisher["w"], expected["w"], rtol=1e-5, atol=1e-8)
    assert not np.allclose(fisher["w"], squared_mean["w"])


def test_fisher_diagonal_compiles_once_per_loss_fn():
    traces = []

    def loss_fn(params, example):
        traces.append(1)
        return _softmax_ce(params, example)

    rng = np.random.default_rng(7)
    params = _params(rng)
    fisher_diagonal(loss_fn, params, _batches(rng, (8,)), chunk_size=4)
    first = len(traces)
    # A short last batch is padded to the same shape, and a second call reuses the compiled step.
    fisher_diagonal(loss_fn, params, _batches(rng, (8, 8, 3)), chunk_size=4)
    assert len(traces) == first


def test_fisher_diagonal_extra_args_are_traced():
    traces = []

    def loss_fn(params, example, scale):
        traces.append(1)
        return scale * _softmax_ce(params, example)

    rng = np.random.default_rng(9)
    params, batches = _params(rng), _batches(rng, (6,))
    base = _np_fisher(params, batches)
    first = None
    for scale in (1.0, 3.0):  # F scales with scale²; the new value reuses the compiled step
        fisher = fisher_diagonal(
            loss_fn, params, batches, chunk_size=4, extra_args=(jnp.float32(scale),)
        )
        np.testing.assert_allclose(fisher["b"], scale**2 * base["b"], rtol=1e-5)
        first = len(traces) if first is None else first
    assert len(traces) == first


def test_fisher_diagonal_errors():
    params = _params(np.random.default_rng(8))
    with pytest.raises(ValueError, match="no examples"):
        fisher_diagonal(_softmax_ce, params, [])
    with pytest.raises(ValueError, match="chunk_size"):
        fisher_diagonal(_softmax_ce, params, _batches(np.random.default_rng(0), (2,)), chunk_size=0)
    with pytest.raises(ValueError, match="leading"):
        fisher_diagonal(_softmax_ce, params, [{"x": np.zeros((3, D)), "y": np.zeros(2, int)}])
