"""The neuromodulator's one-step hypergradient, recomputed independently (docs/method.md,
"How φ learns")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nm_hebb_jax import losses
from nm_hebb_jax.models import get_model
from nm_hebb_jax.neuromod import Neuromodulator
from nm_hebb_jax.train import methods as M
from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.loop import Trainer, build_run
from nm_hebb_jax.train.state import weight_decay_mask
from nm_hebb_jax.train.validate import model_overrides
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


def _run_to_apply_step(c):
    """Runs phase 1 of ``c`` up to and including its first φ-update step ``k``.

    Returns ``(plan, run, batches, ewc, states, m)``: ``states[s]`` is the state before step
    ``s`` (for s = k - 1, k), ``m`` the metrics of step k. The EWC anchor is moved away from the
    parameters so both gated terms are non-zero.
    """
    k = c.nm.hyper_every
    mesh, run, plan, step_for, start, state, ewc = _phase1(c)
    ewc = {**ewc, "anchor": jax.tree.map(lambda x: x * 0.9, ewc["anchor"])}
    batches = [
        S.global_batch(run.dataset.train_batch(s, batch_size=c.batch_size), mesh)
        for s in range(k + 1)
    ]
    states = {}
    for s in range(k + 1):
        # The step may donate its input state: give it a copy, keep the one before it.
        states[s] = state
        state, m = step_for(s)(jax.tree.map(jnp.copy, state), ewc, batches[s])
        assert float(m["hyper_applied"]) == float(s == k)
    states[k + 1] = state
    return plan, run, batches, ewc, states, m, step_for


@pytest.mark.parametrize(
    "g_r_mode,phi_optimizer,normalize",
    [("recompute", "sgd", False), ("reuse", "sgd", False), ("recompute", "adam", True)],
)
def test_phi_update_is_the_optimiser_step_on_the_hypergradient(g_r_mode, phi_optimizer, normalize):
    """'recompute': g_CE,t = g_total,t − ν_t g_R,t (exact); 'reuse': ... − ν_t g_R,t−1 (stored);
    h = −η_{t−1} ⟨g_CE,t, g_R,t−1⟩ with the rate of the step that stored g_R (the quickstart's
    :smoke warms up over these steps, so η_t ≠ η_{t−1}); φ takes one step of its optimiser on
    h̃ ∂ν/∂φ + λ_gate ∂KL/∂φ, with h̃ = h/|h| on the first normalised update."""
    c = load_config("quickstart")  # smoke: hyper_every = 3 -> t=2 stores g_R, t=3 applies
    c.nm.hyper_g_r = g_r_mode
    c.nm.phi_optimizer = phi_optimizer
    c.nm.hyper_normalize = normalize
    c.nm.lr = 0.5 if phi_optimizer == "sgd" else 0.01
    k = c.nm.hyper_every
    plan, run, batches, ewc, states, m, step_for = _run_to_apply_step(c)
    before, state = states[k], states[k + 1]
    assert bool(before.hyper["valid"])
    # The stored rate is the storing step's, and the schedule moved between the two steps.
    _, _, schedule = Trainer(run, "/nonexistent-not-written").plan_and_tx(1)
    np.testing.assert_allclose(float(before.hyper["lr"]), float(schedule(k - 1)), rtol=1e-6)
    assert abs(float(schedule(k)) - float(schedule(k - 1))) > 0.1 * float(schedule(k))

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
    dot = sum(
        float(jnp.vdot(a, b))
        for a, b in zip(jax.tree.leaves(g_ce), jax.tree.leaves(before.hyper["g_r"]), strict=True)
    )
    h = -float(schedule(k - 1)) * dot
    np.testing.assert_allclose(float(m["hypergrad"]), h, rtol=1e-4)
    h_used = np.sign(h) if normalize else h
    np.testing.assert_allclose(float(m["hypergrad_scaled"]), h_used, rtol=1e-4)
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
    g_phi = jax.tree.map(lambda a, b: h_used * a + b, dnu, dprior)
    if phi_optimizer == "sgd":
        expect = jax.tree.map(lambda p, g: p - c.nm.lr * g, phi, g_phi)
    else:  # first Adam step: −lr · g / (|g| + eps), elementwise
        expect = jax.tree.map(lambda p, g: p - c.nm.lr * g / (jnp.abs(g) + 1e-8), phi, g_phi)
    for a, b in zip(
        jax.tree.leaves(state.params["neuromod"]), jax.tree.leaves(expect), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    moved = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(state.params["neuromod"]), jax.tree.leaves(phi), strict=True
        )
    )
    if phi_optimizer == "adam":  # scale-free: φ moves by ~lr whatever the size of h
        assert moved > 0.5 * c.nm.lr
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


@pytest.mark.parametrize("g_r_mode", ["recompute", "reuse"])
def test_logged_hypergradient_is_the_derivative_of_the_next_ce_under_warmup(g_r_mode):
    """The logged h at step k is dL_CE,k/dν_{k−1}, measured by a float64 central finite difference
    of the next batch's CE in ν_{k−1}, while the warm-up moves the rate (η_k = 1.5 η_{k−1}: a
    hypergradient that used η_k would be 50% off). Plain SGD (momentum 0), where the one-step
    rule is exact. 'reuse' replaces g_R,k by the stored g_R,k−1 in g_CE,k = g_total,k − ν_k g_R,k:
    its h is checked against the same float64 recomputation with that estimate, and must still
    be close to the true derivative."""
    c = load_config("quickstart")
    c.nm.hyper_g_r = g_r_mode
    c.optim.momentum = 0.0
    k = c.nm.hyper_every
    plan, run, batches, ewc, states, m, _ = _run_to_apply_step(c)
    trainer = Trainer(run, "/nonexistent-not-written")
    _, _, schedule = trainer.plan_and_tx(1)
    eta = float(schedule(k - 1))
    np.testing.assert_allclose(float(schedule(k)) / eta, 1.5, rtol=1e-6)

    with jax.enable_x64(True):
        model64 = get_model(
            c.model.name,
            num_classes=run.num_classes,
            dtype=jnp.float64,
            **model_overrides(c),
        )
        obj = M.phase_plan(c, model64, 1, run.hebb_layers).objective

        def f64(tree):
            return jax.tree.map(
                lambda x: (
                    jnp.asarray(x, jnp.float64)
                    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
                    else jnp.asarray(x)
                ),
                tree,
            )

        def at(s):
            st = states[s]
            rng = jax.random.fold_in(jax.random.wrap_key_data(st.rng), st.step)
            return f64(st.params), {"batch_stats": f64(st.batch_stats), "ewc": f64(ewc)}, rng

        params, obj_state, rng = at(k - 1)
        batch = f64(batches[k - 1])
        (_, aux), g_total = jax.value_and_grad(obj, has_aux=True)(params, obj_state, batch, rng)
        g_r = jax.grad(lambda p: obj(p, obj_state, batch, rng)[1]["regularizer"])(params)
        nu0 = aux["gate"]
        # θ_k(ν) of the plain-SGD step (weight decay does not depend on ν and cancels in h)
        wd = c.optim.weight_decay
        mask = weight_decay_mask(params)

        def theta_next(nu):
            def upd(p, g, r, dec):
                return p - eta * (g + (nu - nu0) * r + (wd * p if dec else 0.0))

            return jax.tree.map(
                upd, params["backbone"], g_total["backbone"], g_r["backbone"], mask["backbone"]
            )

        np.testing.assert_allclose(
            jax.tree.leaves(theta_next(nu0))[0],
            np.asarray(jax.tree.leaves(states[k].params["backbone"])[0]),
            rtol=1e-4,
            atol=1e-6,
        )
        _, next_state, next_rng = at(k)
        next_batch = f64(batches[k])

        def next_ce(nu):
            p = {**params, "backbone": theta_next(nu)}
            return obj(p, next_state, next_batch, next_rng)[1]["terms"]["ce"]

        eps = 1e-3
        fd = float((next_ce(nu0 + eps) - next_ce(nu0 - eps)) / (2 * eps))
        if g_r_mode == "recompute":
            reference = fd
        else:
            p_k = {**params, "backbone": theta_next(nu0)}
            (_, aux_k), g_k = jax.value_and_grad(obj, has_aux=True)(
                p_k, next_state, next_batch, next_rng
            )
            g_ce = jax.tree.map(
                lambda g, r: g - aux_k["gate"] * r, g_k["backbone"], g_r["backbone"]
            )
            reference = -eta * float(
                sum(
                    jnp.vdot(a, b)
                    for a, b in zip(
                        jax.tree.leaves(g_ce), jax.tree.leaves(g_r["backbone"]), strict=True
                    )
                )
            )
            np.testing.assert_allclose(reference, fd, rtol=0.3)
    assert abs(fd) > 0
    np.testing.assert_allclose(float(m["hypergrad"]), reference, rtol=2e-3)


def test_exact_hypergradient_step_shares_the_forward_pass():
    """The exact variant computes g_R in the same program as the training gradient, from the same
    inputs: XLA merges the two forward passes, so the variant adds only g_R's backward through
    the layers up to the tap (BENCHMARKS.md: the hypergradient step's extra cost)."""
    from nm_hebb_jax.train.hypergradient import hyper_variant

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
