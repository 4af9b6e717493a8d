"""The gate really learns on a small real run (the bundled digits), with the scale-free φ step,
while the plain-SGD rule on the raw hypergradient leaves it where it started (issue: ν only
followed L_CE through the MLP's initial weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.hypergradient import gate_reference_metrics
from nm_hebb_jax.train.loop import Trainer, build_run
from tests.util import load_config

pytestmark = pytest.mark.slow

STEPS = 40


def _phase1_gate_trajectory(**nm):
    c = load_config("quickstart")  # :smoke's tiny ResNet on the digits
    c.phase1.num_steps = STEPS
    c.nm.hyper_every = 2  # a φ update every 2 steps: 19 updates in 40 steps
    for k, v in nm.items():
        c.nm[k] = v
    mesh = S.make_mesh(jax.devices()[:1])
    run = build_run(c, mesh=mesh)
    trainer = Trainer(run, "/nonexistent-not-written")
    params, bs = trainer.init_variables()
    plan, tx, step_for, start, _ = trainer.phase_setup(1)
    state = trainer.make_state(params, bs, start, tx, plan)
    ewc = trainer.compute_ewc(state, refresh_index=0)
    phi0 = jax.tree.map(jnp.copy, state.params["neuromod"])
    hs = []
    for s in range(STEPS):
        batch = S.global_batch(run.dataset.train_batch(s, batch_size=c.batch_size), mesh)
        state, m = step_for(s)(state, ewc, batch)
        if float(m["hyper_applied"]):
            hs.append(float(m["hypergrad"]))
    moved = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(state.params["neuromod"]), jax.tree.leaves(phi0), strict=True
        )
    )
    ref0 = gate_reference_metrics(trainer.neuromod, phi0)
    ref1 = gate_reference_metrics(trainer.neuromod, state.params["neuromod"])
    dnu = max(abs(float(ref1[k]) - float(ref0[k])) for k in ref0)
    return moved, dnu, np.asarray(hs)


def test_scale_free_phi_step_moves_the_gate_the_plain_rule_does_not():
    moved, dnu, hs = _phase1_gate_trajectory()  # defaults: normalised h, Adam at 0.01
    assert hs.size == STEPS // 2 - 1 and np.all(np.isfinite(hs))
    assert np.max(np.abs(hs)) < 1e-2  # the raw hypergradient is tiny ...
    assert moved > 0.05  # ... yet φ moves by a meaningful amount (≈ 0.01 per update) ...
    assert dnu > 2e-3  # ... and so does the learned gate ν(L) at fixed losses
    moved_sgd, dnu_sgd, _ = _phase1_gate_trajectory(
        phi_optimizer="sgd", hyper_normalize=False, lr=1.0
    )  # the previous rule: plain SGD at rate 1 on the raw h
    assert moved_sgd < 0.1 * moved and dnu_sgd < 0.1 * dnu
