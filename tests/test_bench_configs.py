"""experiments/bench: benchmarked configs are the full-size runs' configs, not the smoke ones."""

from __future__ import annotations

import importlib.util
import os

from nm_hebb_jax.config_base import get_base_config

BENCH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "bench")


def _step_bench():
    spec = importlib.util.spec_from_file_location(
        "step_bench", os.path.join(BENCH, "step_bench.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_config_keeps_the_full_size_cpu_runtime_and_model():
    # make_config starts from the smoke config for its offline data; the smoke config turns
    # cpu_malloc_tuning off, which torch_reference's JAX workers then silently ran without.
    full = get_base_config()
    cfg = _step_bench().make_config("resnet18", "nm_hebb", 128, "float32")
    assert (cfg.cpu_tuning, cfg.cpu_malloc_tuning) == (full.cpu_tuning, full.cpu_malloc_tuning)
    assert cfg.cpu_malloc_tuning is True
    assert cfg.model.name == "resnet18" and not dict(cfg.model.overrides)
    assert cfg.batch_size == 128 and cfg.model.dtype == "float32"
