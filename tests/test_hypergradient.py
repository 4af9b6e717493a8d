"""The neuromodulator's one-step hypergradient update, recomputed independently (METHOD.md A)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nm_hebb_jax import losses
from nm_hebb_jax.neuromod import Neuromodulator
from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.loop import Trainer, build_run
from tests.util import load_config

pytestmark = pytest.mark.slow


def _phase1(c):
    """Phase 1 of config ``c`` on one device: ``(mesh, run, plan, step_for, start, state, ewc)``,
    with the EWC state of a real (non-zero) Fisher, so both terms are in g_R."""
    mesh = S.make_mesh(jax.devices()[:1])
    run = build_run(c, mesh=mesh)
    trainer = Trainer(run, "/nonexistent-not-written")
    params, bs = trainer.init_variables()
    plan, tx, step_for, start, _ = trainer.phase_setup(1)
    state = trainer.make_state(params, bs, start, tx, plan)
    return mesh, run, plan, step_for, start, state, trainer.compute_ewc(state, refresh_index=0)


@pytest.mark.parametrize("g_r_mode", ["recompute", "reuse"])
def test_phi_update_equals_minus_lr_times_hypergradient_times_dnu(g_r_mode):
    """'recompute': g_CE,t = g_total,t − ν_t g_R,t (exact); 'reuse': ... − ν_t g_R,t−1 (stored)."""
    c = load_config("quickstart")  # smoke: hyper_every = 3 -> t=2 stores g_R, t=3 applies
    c.nm.hyper_g_r = g_r_mode
    k = c.nm.hyper_every
    mesh, run, plan, step_for, start, state, ewc = _phase1(c)
    ewc = {**ewc, "anchor": jax.tree.map(lambda x: x * 0.9, ewc["anchor"])}
    batches = [
        S.global_batch(run.dataset.train_batch(s, batch_size=c.batch_size), mesh)
        for s in range(k + 1)
    ]
    for s in range(k):
        state, m = step_for(s)(state, ewc, batches[s])
        assert float(m["hyper_applied"]) == 0.0
    before = state
    assert bool(before.hyper["valid"])
    # The step donates its input state: give it a copy, keep ``before`` for the recomputation.
    state, m = step_for(k)(jax.tree.map(jnp.copy, before), ewc, batches[k])
    assert float(m["hyper_applied"]) == 1.0

    # Independent recomputation at step t = k from the state before it.
    rng = jax.random.fold_in(jax.random.wrap_key_data(before.rng), before.step)
    obj_state = {"batch_stats": before.batch_stats, "ewc": ewc}

    def total(p):
        return plan.objective(p, obj_state, batches[k], rng)

    (_, aux), g_total = jax.value_and_grad(total, has_aux=True)(before.params)
    g_reg = jax.grad(lambda p: total(p)[1]["regularizer"])(before.params)["backbone"]
    nu = aux["gate"]
    g_r_t = g_reg if g_r_mode == "recompute" else before.hyper["g_r"]
    g_ce = jax.tree.map(lambda g, r: g - nu * r, g_total["backbone"], g_r_t)
    lr = float(m["lr"])
    dot = sum(
        float(jnp.vdot(a, b))
        for a, b in zip(jax.tree.leaves(g_ce), jax.tree.leaves(before.hyper["g_r"]), strict=True)
    )
    h = -lr * dot
    np.testing.assert_allclose(float(m["hypergrad"]), h, rtol=1e-4)
    module = Neuromodulator(hidden=c.nm.hidden)
    phi = before.params["neuromod"]
    dnu = jax.grad(lambda p: module.apply({"params": p}, before.hyper["s"]))(phi)
    dprior = jax.grad(
        lambda p: (
            c.nm.prior_weight
            * losses.gate_prior(
                module.apply({"params": p}, aux["gate_input"]), target=c.nm.prior_target
            )
        )
    )(phi)
    expect = jax.tree.map(lambda p, a, b: p - c.nm.lr * (h * a + b), phi, dnu, dprior)
    for a, b in zip(
        jax.tree.leaves(state.params["neuromod"]), jax.tree.leaves(expect), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)
    # φ is not touched by the main optimiser: on a plain step it stays fixed.
    plain = step_for(k + 1)
    state2, m2 = plain(jax.tree.map(jnp.copy, state), ewc, batches[0])
    assert float(m2["hyper_applied"]) == 0.0
    for a, b in zip(
        jax.tree.leaves(state2.params["neuromod"]),
        jax.tree.leaves(state.params["neuromod"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The buffer stored at t = k - 1 is the gradient of the ungated regularisers then.
    assert float(optax.tree.norm(before.hyper["g_r"])) > 0
    # 'reuse' runs no g_R pass on the applying step: a third compiled variant, and the stored
    # estimate differs from the exact g_R,t (so the two modes really differ).
    if g_r_mode == "reuse":
        assert step_for(k) is not step_for(k - 1)
        diff = optax.tree.norm(jax.tree.map(jnp.subtract, g_reg, before.hyper["g_r"]))
        assert float(diff) > 1e-6 * float(optax.tree.norm(g_reg))


def test_exact_hypergradient_step_shares_the_forward_pass():
    """The exact variant computes g_R in the same program as the training gradient, from the same
    inputs: XLA merges the two forward passes, so the variant adds only g_R's backward through
    the layers up to the tap (BENCHMARKS.md: the hypergradient step's extra cost)."""
    from nm_hebb_jax.train.steps import hyper_variant

    c = load_config("quickstart")
    k = c.nm.hyper_every
    mesh, run, plan, step_for, start, state, ewc = _phase1(c)
    batch = S.global_batch(run.dataset.train_batch(0, batch_size=c.batch_size), mesh)
    t_plain = next(t for t in range(k) if hyper_variant(t, k) is False)
    t_exact = next(t for t in range(k) if hyper_variant(t, k) is True)
    assert step_for(start + t_exact) is not step_for(start + t_plain)

    def convolutions(fn, *args):
        return jax.jit(fn).lower(*args).compile().as_text().count(" convolution(")

    def regularizer(p, obj_state, batch, rng):
        return plan.objective(p, obj_state, batch, rng)[1]["regularizer"]

    obj_state = {"batch_stats": state.batch_stats, "ewc": ewc}
    reg_args = (state.params, obj_state, batch, jax.random.key(0))
    step_args = (state, ewc, batch)
    forward_to_tap = convolutions(regularizer, *reg_args)
    g_r_pass = convolutions(jax.grad(regularizer), *reg_args)
    added = convolutions(step_for(start + t_exact), *step_args) - convolutions(
        step_for(start + t_plain), *step_args
    )
    assert 0 < forward_to_tap < g_r_pass
    assert added == g_r_pass - forward_to_tap
