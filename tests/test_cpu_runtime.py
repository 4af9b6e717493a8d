"""nm_hebb_jax.cpu_runtime: the CPU XLA flag is added before the backend starts, and only then."""

from __future__ import annotations

import os
import subprocess
import sys

from nm_hebb_jax import cpu_runtime

FLAG = cpu_runtime.CPU_XLA_FLAGS[0]
NAME = FLAG.split("=", 1)[0]


def _run(code: str, xla_flags: str | None) -> list[str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()


CODE = """
import os
from nm_hebb_jax import cpu_runtime
print(cpu_runtime.configure())
print(os.environ.get('XLA_FLAGS', ''))
import jax
jax.numpy.zeros(1).block_until_ready()
print(cpu_runtime.configure())
"""


def test_configure_appends_the_flag_once_and_keeps_the_users_flags():
    added, flags, again = _run(CODE, "--xla_force_host_platform_device_count=2")
    assert added == repr([FLAG])
    assert flags == f"--xla_force_host_platform_device_count=2 {FLAG}"
    assert again == "[]"  # already set: nothing to add


def test_users_own_setting_of_the_flag_wins():
    added, flags, _ = _run(CODE, f"{NAME}=individual_convolution")
    assert added == "[]"
    assert flags == f"{NAME}=individual_convolution"


def test_after_the_backend_started_nothing_changes():
    code = (
        "import os, jax; jax.numpy.zeros(1).block_until_ready()\n"
        "from nm_hebb_jax import cpu_runtime\n"
        "print(cpu_runtime.configure()); print(os.environ.get('XLA_FLAGS', ''))"
    )
    added, flags = (_run(code, None) + [""])[:2]
    assert added == "[]"
    assert FLAG not in flags


MALLOC_CODE = """
from nm_hebb_jax import cpu_runtime
print(sorted(cpu_runtime.tune_malloc().items()))
import jax
jax.numpy.zeros(1).block_until_ready()
print(sorted(cpu_runtime.tune_malloc().items()), sorted(cpu_runtime.malloc_applied().items()))
"""


def _run_env(code: str, **env_vars: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "JAX_PLATFORMS"))}
    env.update(env_vars)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()


def test_tune_malloc_sets_glibc_options_once_before_the_backend():
    first, again = _run_env(MALLOC_CODE)
    want = sorted((name, value) for name, (_, value, _) in cpu_runtime.MALLOC_OPTIONS.items())
    assert first == repr(want)
    assert again == f"{want!r} {want!r}"  # a second call reports what was set, changes nothing


def test_tune_malloc_leaves_users_settings_and_accelerators_alone():
    (first, _) = _run_env(MALLOC_CODE, MALLOC_ARENA_MAX="4")
    assert "M_ARENA_MAX" not in first and "M_MMAP_MAX" in first
    (first, _) = _run_env(MALLOC_CODE, GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    assert first == "[]"
    code = "from nm_hebb_jax import cpu_runtime; print(cpu_runtime.tune_malloc())"
    assert _run_env(code, JAX_PLATFORMS="tpu") == ["{}"]
    code = (
        "import jax; jax.numpy.zeros(1).block_until_ready()\n"
        "from nm_hebb_jax import cpu_runtime; print(cpu_runtime.tune_malloc())"
    )
    assert _run_env(code) == ["{}"]  # backend already started: too late, nothing set
