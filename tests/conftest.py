"""Test set-up: 4 simulated CPU devices (multi-device tests), repo root importable (configs),
the trainer's CPU XLA flags."""

import os
import sys
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A persistent compilation cache shared by the test processes and the subprocesses they start
# (relaunched runs, 2-process runs): each program is compiled once per machine.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "nm_hebb_jax_test_jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

from nm_hebb_jax import cpu_runtime  # noqa: E402

# The trainer's CPU default (main.py applies it too): in-process runs and the main.py
# subprocesses compile the same programs, so their results can be compared bit for bit.
cpu_runtime.configure(malloc=False)  # tests are compile-bound: keep malloc's arenas


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One uninterrupted run of ``configs/quickstart.py:smoke`` (4 simulated CPU devices)."""
    from nm_hebb_jax.train.loop import train_and_evaluate
    from tests.util import load_config

    workdir = str(tmp_path_factory.mktemp("smoke") / "run")
    config = load_config("quickstart")
    summary = train_and_evaluate(config, workdir)
    return config, workdir, summary
