"""experiments/bench: benchmarked configs are the full-size runs' configs, not the smoke ones;
the profile summary reads a real trace; the EWC bench compares like with like."""

from __future__ import annotations

import importlib.util
import os
import types

import jax
import jax.numpy as jnp
import pytest

from nm_hebb_jax.config_base import get_base_config
from nm_hebb_jax.train.validate import model_overrides

BENCH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "bench")


def _bench_module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_config_keeps_the_full_size_cpu_runtime_and_model():
    # make_config starts from the smoke config for its offline data; the smoke config turns
    # cpu_malloc_tuning off, which torch_reference's JAX workers then silently ran without.
    full = get_base_config()
    cfg = _bench_module("step_bench").make_config("resnet18", "nm_hebb", 128, "float32")
    assert (cfg.cpu_tuning, cfg.cpu_malloc_tuning) == (full.cpu_tuning, full.cpu_malloc_tuning)
    assert cfg.cpu_malloc_tuning is True
    assert cfg.model.name == "resnet18" and not model_overrides(cfg)  # the full-size model
    assert cfg.batch_size == 128 and cfg.model.dtype == "float32"


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU's worker-thread lines")
def test_profile_summary_counts_named_operations_reductions_and_loops(tmp_path):
    """profile_step.summarize on a real trace: a reduction inside a 4-step scan is found, with
    its calls per step, and the named time is part of the busy time."""
    import glob

    profile_step = _bench_module("profile_step")
    summarize = profile_step.summarize
    # a loop's event contains its body's: each counts its own (exclusive) time once
    nested = [(0, 10, "while"), (1, 3, "body_a"), (4, 6, "body_b"), (12, 14, "after")]
    assert sorted(profile_step._self_times(nested)) == sorted(
        [("body_a", 2), ("body_b", 2), ("while", 6), ("after", 2)]
    )

    def body(carry, x):
        return carry + jnp.sum(jnp.tanh(x) * x, axis=0), None

    fn = jax.jit(lambda xs: jax.lax.scan(body, jnp.zeros((512,)), xs)[0])
    xs = jnp.ones((4, 2048, 512))
    compiled = fn.lower(xs).compile()
    jax.block_until_ready(compiled(xs))
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(2):
            jax.block_until_ready(compiled(xs))
    (trace,) = glob.glob(str(tmp_path / "**" / "*.xplane.pb"), recursive=True)
    report = summarize(trace, compiled.as_text(), steps=2, top=5)
    assert report["threads"] >= 1
    assert report["busy_ms"] >= report["named_ms"] > 0
    reductions = [k for k in report["kinds"] if k["reduction_ms"] > 0]
    assert reductions, report["kinds"]
    assert any(k["reduction_in_loops_ms"] > 0 for k in reductions)
    assert any(op["calls"] == 4 for op in report["top_ops"]), report["top_ops"]


def test_ewc_bench_variants_compute_the_same_penalty_and_update():
    """ewc_bench's three EWC variants (autodiff, hand-written gradient, pre-normalised Fisher)
    give the same penalty and parameter update, and that update differs from the plain one."""
    bench = _bench_module("ewc_bench")
    cfg = bench.make_config("resnet18", "baseline", 8, "float32")
    calls, count = bench.parameter_variants("resnet18", cfg, stage_sizes=(1, 1), width=8)
    out = {name: call() for name, call in calls.items()}
    (ref, _), value = out["ewc"]
    assert count == sum(x.size for x in jax.tree.leaves(ref["backbone"]))
    assert float(value) > 0
    for name in ("ewc_analytic", "ewc_prenormalized"):
        (params, _), v = out[name]
        assert jnp.allclose(v, value, rtol=1e-5), name
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
            assert jnp.allclose(a, b, rtol=1e-5, atol=1e-6), name
    (plain, _), _ = out["update"]
    assert not all(
        jnp.allclose(a, b)
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(ref), strict=True)
    )


@pytest.mark.parametrize("g_r_mode", ["recompute", "reuse"])
def test_step_bench_window_schedule_is_the_trainers_phase1_cycle(g_r_mode):
    """step_bench's schedule windows run the compiled variants in the order the trainer's
    step_for picks them (phase-local t = 0 .. k - 1, repeating)."""
    from nm_hebb_jax.train import sharding as S
    from nm_hebb_jax.train.loop import Trainer, build_run
    from tests.util import load_config

    sb = _bench_module("step_bench")
    c = load_config("quickstart")
    c.nm.hyper_every, c.nm.hyper_g_r = sb.HYPER_EVERY, g_r_mode
    trainer = Trainer(build_run(c, mesh=S.make_mesh(jax.devices()[:1])), "/nonexistent")
    _, _, step_for, start, _ = trainer.phase_setup(1)
    compiled = {
        "p1_plain": "phase1",
        "p1_hyper": "phase1_hyper",
        "p1_store": "phase1_hyper_store",
        "p1_apply": "phase1_hyper_apply",
    }
    schedule = sb.phase1_schedule(sb.HYPER_EVERY, g_r_mode)
    assert len(schedule) == sb.HYPER_EVERY and schedule.count("p1_plain") == sb.HYPER_EVERY - 2
    for t in range(3 * sb.HYPER_EVERY):
        expected = trainer.compiled[compiled[schedule[t % sb.HYPER_EVERY]]]
        assert step_for(start + t) is expected, (t, schedule[t % sb.HYPER_EVERY])


def test_step_bench_windows_count_k_steps_after_an_uncounted_entry(monkeypatch):
    """time_windows: one entry call per window, not counted, then k counted calls; rounds are
    round-robin and paired_ratios divides by the same round's base window."""
    sb = _bench_module("step_bench")
    clock, log = [0.0], []

    def call(name, seconds):
        def run():
            log.append(name)
            clock[0] += seconds(log.count(name)) if callable(seconds) else seconds

        return run

    monkeypatch.setattr(sb, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    # ce's steps cost 1 s in the first round (its calls 1-3: entry + 2) and 2 s in the second
    calls = {"ce": call("ce", lambda n: 1.0 if n <= 3 else 2.0), "p1": call("p1", 3.0)}
    steps = sb.time_windows(calls, repeats=2, k=2, entries={"p1": call("entry", 100.0)})
    assert log == (["ce"] * 3 + ["entry", "p1", "p1"]) * 2
    assert steps == {"ce": [[1.0, 1.0], [2.0, 2.0]], "p1": [[3.0, 3.0], [3.0, 3.0]]}
    sums = sb.window_sums(steps)
    assert sums == {"ce": [2.0, 4.0], "p1": [6.0, 6.0]}
    ratios = sb.paired_ratios(sums, "ce")
    assert ratios["p1"]["rounds"] == [3.0, 1.5]
    assert (ratios["p1"]["median"], ratios["p1"]["min"], ratios["p1"]["max"]) == (2.25, 1.5, 3.0)
