"""Where a step index meets a schedule: the rate the optimiser applies is the rate logged (and
stored for the hypergradient) in both phases and after a skipped step, and the EWC anchor is the
parameters at the refresh step (docs/method.md; the hypergradient's own rate is tested in
test_hypergradient.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.loop import Trainer, build_run
from tests.util import load_config

pytestmark = pytest.mark.slow


def _applied_rate(plan, state, ewc, batch, new_state) -> float:
    """−Δθ / g over the backbone kernels, for plain SGD without momentum or weight decay."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    obj_state = {"batch_stats": state.batch_stats, "ewc": ewc}
    g = jax.grad(lambda p: plan.objective(p, obj_state, batch, rng)[0])(state.params)
    ratios = []
    for p0, p1, gg in zip(
        jax.tree.leaves(state.params["backbone"]),
        jax.tree.leaves(new_state.params["backbone"]),
        jax.tree.leaves(g["backbone"]),
        strict=True,
    ):
        gg = np.asarray(gg, np.float64)
        big = np.abs(gg) > 1e-3 * np.abs(gg).max()
        ratios.append(-(np.asarray(p1, np.float64) - np.asarray(p0, np.float64))[big] / gg[big])
    return float(np.median(np.concatenate(ratios)))


def test_applied_rate_is_the_logged_schedule_in_both_phases_and_after_a_skipped_step():
    c = load_config("quickstart")  # smoke: 6 + 4 steps, warm-up over phase 1's first 5
    c.method = "baseline"
    c.optim.momentum = 0.0
    c.optim.weight_decay = 0.0
    c.skip_nonfinite = True
    mesh = S.make_mesh(jax.devices()[:1])
    run = build_run(c, mesh=mesh)
    trainer = Trainer(run, "/nonexistent-not-written")
    params, bs = trainer.init_variables()
    ewc = None
    for phase in (1, 2):
        plan, tx, step_for, start, n = trainer.phase_setup(phase)
        _, _, schedule = trainer.plan_and_tx(phase)
        state = trainer.make_state(params, bs, start, tx, plan)
        if ewc is None:
            from nm_hebb_jax.train.state import init_ewc_state

            ewc = init_ewc_state(state.params["backbone"])
        seen = []
        for t in range(n):
            batch = run.dataset.train_batch(start + t, batch_size=c.batch_size)
            if phase == 1 and t == 2:  # a skipped (non-finite) update
                batch = {**batch, "image": batch["image"] * np.float32("nan")}
            batch = S.global_batch(batch, mesh)
            new, m = step_for(start + t)(jax.tree.map(jnp.copy, state), ewc, batch)
            np.testing.assert_allclose(float(m["lr"]), float(schedule(t)), rtol=1e-6)
            if phase == 1 and t == 2:
                assert not bool(m["finite"])
                for a, b in zip(
                    jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True
                ):
                    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            elif float(m["lr"]) > 0:
                rate = _applied_rate(plan, state, ewc, batch, new)
                np.testing.assert_allclose(rate, float(m["lr"]), rtol=1e-3)
                seen.append(t)
            else:
                assert phase == 1 and t == 0  # the warm-up starts at 0
            state = new
        params, bs = state.params, state.batch_stats
        if phase == 1:
            assert seen == [1, 3, 4, 5]  # steps after the skipped one included
        else:  # phase 2 starts its own schedule at its peak: peak × lr_factor at t = 0
            assert seen == list(range(n))
            peak = c.optim.base_lr * c.batch_size / 128 * c.phase2.lr_factor
            np.testing.assert_allclose(float(schedule(0)), peak, rtol=1e-6)


def test_ewc_anchor_is_the_parameters_at_the_refresh_step(smoke_run):
    """quickstart:smoke refreshes every 5 steps in phase 1 (at t = 5, before step 5 runs) and
    anchors phase 2 at the end of phase 1 (step 6); checkpoints hold steps 5, 6 and 10."""
    config, workdir, _ = smoke_run
    from nm_hebb_jax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir, read_only=True)
    try:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        trees = {s: ckpt.restore_raw(s, sharding=sharding)[0] for s in (5, 6, 10)}
    finally:
        ckpt.close()

    def same(a, b):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    def fisher_sum(tree):
        return sum(float(np.sum(np.asarray(x))) for x in jax.tree.leaves(tree["ewc"]["fisher"]))

    assert fisher_sum(trees[5]) == 0.0  # before the first refresh: F = 0
    same(trees[6]["ewc"]["anchor"], trees[5]["train"]["params"]["backbone"])
    assert fisher_sum(trees[6]) > 0
    same(trees[10]["ewc"]["anchor"], trees[6]["train"]["params"]["backbone"])
    assert fisher_sum(trees[10]) > 0
