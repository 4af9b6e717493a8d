"""experiments/bench: the benchmarked configs are the full-size runs' configs, step_bench runs the
trainer's phase-1 schedule, and input_bench times the trainer's batches."""

from __future__ import annotations

import importlib.util
import os
import types

import jax
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


def test_input_bench_times_the_trainers_batches_of_every_kind():
    """input_bench builds the dataset from its own data config and times augmented, plain and
    P×K batches of the size asked for."""
    from nm_hebb_jax.data import build_dataset

    ib = _bench_module("input_bench")
    ds = build_dataset(ib.data_config("digits", "", "digits"), seed=0)
    calls = []
    real = ds.train_batch

    def counting(step, **kw):
        batch = real(step, **kw)
        calls.append((kw, batch["image"].shape))
        return batch

    ds.train_batch = counting
    row = ib.bench(ds, 8, 2, augment=True, balanced=True)
    assert row["images_per_s"] > 0 and row["median_ms"] > 0
    assert len(calls) == 3  # one warm-up, then the timed steps
    assert all(shape == (8, 32, 32, 3) and kw["balanced"] for kw, shape in calls)
