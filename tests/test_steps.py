"""The train step on a fixed tiny model against hand-computed numbers (the scenic habit).

A linear classifier with fixed weights, a batch of four examples, the trainer's optimiser (SGD with
Nesterov momentum 0.9 and weight decay on kernels only) at a constant rate: the loss, the logged
metrics and the parameters after two steps are recomputed in float64 NumPy from the formulas, not
from the code under test.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nm_hebb_jax import objectives as O
from nm_hebb_jax.objectives import TERM_NAMES
from nm_hebb_jax.train.state import TrainState, make_optimizer
from nm_hebb_jax.train.steps import make_train_step

LR, MOMENTUM, WD = 0.1, 0.9, 0.01
W0 = np.array([[0.2, -0.1, 0.0], [0.0, 0.3, -0.2], [0.1, 0.1, 0.1]])  # [features, classes]
B0 = np.array([0.05, -0.05, 0.0])
X = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 1.0, 1.0], [-1.0, 0.5, 0.5]])
Y = np.array([0, 1, 2, 1])


class Linear(nn.Module):
    """``logits = x W + b`` on the flattened image; counts the examples seen in ``batch_stats``."""

    hebb_layers: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        seen = self.variable("batch_stats", "seen", lambda: jnp.zeros((), jnp.float32))
        if train:
            seen.value = seen.value + x.shape[0]
        z = x.reshape(x.shape[0], -1)
        return nn.Dense(3, name="classifier")(z), {"embedding": z}


def _config():
    c = ml_collections.ConfigDict()
    c.optim = ml_collections.ConfigDict(
        {"grad_clip": 0.0, "weight_decay": WD, "momentum": MOMENTUM, "nesterov": True}
    )
    return c


def _numpy_ce_and_grads(w, b):
    logits = X @ w + b
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(4), Y]))
    dlogits = (p - np.eye(3)[Y]) / 4
    top1 = np.mean(logits.argmax(-1) == Y)
    return loss, X.T @ dlogits, dlogits.sum(0), top1


def test_two_train_steps_match_the_hand_computed_loss_update_and_metrics():
    tx = make_optimizer(_config(), optax.constant_schedule(LR), train_neuromod=False)
    step = jax.jit(
        make_train_step(
            O.classification_objective(Linear()),
            tx,
            optax.constant_schedule(LR),
            phase_start=0,
            gate_mode=None,
        )
    )
    kernel, bias = jnp.asarray(W0, jnp.float32), jnp.asarray(B0, jnp.float32)
    params = {"backbone": {"classifier": {"kernel": kernel, "bias": bias}}}
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats={"seen": jnp.zeros((), jnp.float32)},
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(0)),
        hyper={},
    )
    batch = {"image": jnp.asarray(X.reshape(4, 1, 1, 3), jnp.float32), "label": jnp.asarray(Y)}

    w, b, trace_w, trace_b = W0, B0, np.zeros_like(W0), np.zeros_like(B0)
    for t in range(2):
        state, m = step(state, {}, batch)
        loss, gw, gb, top1 = _numpy_ce_and_grads(w, b)
        # weight decay on the kernel only, then optax's Nesterov trace: u = g + μ (g + μ trace)
        dw, db = gw + WD * w, gb
        trace_w, trace_b = dw + MOMENTUM * trace_w, db + MOMENTUM * trace_b
        uw, ub = -LR * (dw + MOMENTUM * trace_w), -LR * (db + MOMENTUM * trace_b)
        w, b = w + uw, b + ub

        np.testing.assert_allclose(m["loss"], loss, rtol=1e-6)
        np.testing.assert_allclose(m["terms/ce"], loss, rtol=1e-6)
        np.testing.assert_allclose(m["terms/ce_weighted"], loss, rtol=1e-6)
        for name in TERM_NAMES[1:]:  # off terms are logged as exact zeros
            assert float(m[f"terms/{name}"]) == float(m[f"terms/{name}_weighted"]) == 0.0
        np.testing.assert_allclose(m["top1"], top1)
        np.testing.assert_allclose(m["lr"], LR, rtol=1e-7)
        norm = lambda *a: np.sqrt(sum(np.sum(x**2) for x in a))  # noqa: E731
        np.testing.assert_allclose(m["grad_norm"], norm(gw, gb), rtol=1e-5)
        np.testing.assert_allclose(m["param_norm"], norm(w, b), rtol=1e-5)
        np.testing.assert_allclose(m["update_norm"], norm(uw, ub), rtol=1e-5)
        assert bool(m["finite"])
        got = state.params["backbone"]["classifier"]
        np.testing.assert_allclose(got["kernel"], w, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["bias"], b, rtol=1e-5, atol=1e-7)
        assert int(state.step) == t + 1
        assert float(state.batch_stats["seen"]) == 4.0 * (t + 1)
