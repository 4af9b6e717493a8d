"""CPU runtime defaults of the trainer: XLA's own convolutions, and a malloc that keeps memory.

jaxlib 0.10.2 sends every CPU convolution to YNNPACK by default; XLA's own convolutions are
faster, forward and in both gradients (BENCHMARKS.md, method notes). :func:`configure` appends
:data:`CPU_XLA_FLAGS` to ``XLA_FLAGS`` before JAX starts its backend; the trainer, the evaluation
CLI and the benchmarks call it (``config.cpu_tuning``, default True).

The flag is an ``xla_cpu_`` flag: GPU and TPU computations are unaffected. CPU results change at
float32 rounding level (another convolution algorithm). A user's own ``XLA_FLAGS`` entry for the
same flag wins. Library users who import the losses into their own pipeline are not affected
unless they call :func:`configure` (or set the flag) themselves.

:func:`tune_malloc` (``config.cpu_malloc_tuning``, default True; part of :func:`configure`):
XLA:CPU allocates each execution's temporary buffer (gigabytes for a full-size step) with
``malloc``, which glibc serves with a fresh ``mmap`` and returns with ``munmap``: every step
page-faults its whole working set again. glibc ``mallopt`` with one arena, no ``mmap`` and no
trimming keeps the freed memory in the heap for the next step (BENCHMARKS.md, method notes). The
costs: the process keeps its peak heap until it exits, and with one arena XLA's multi-threaded
compiler contends for malloc, which is why compile-bound configs (the quickstart, ``:smoke``) turn
it off. Applied only on glibc, before the backend starts, when no GPU/TPU plugin is installed and
``JAX_PLATFORMS`` does not name another platform first; a ``MALLOC_*`` or ``GLIBC_TUNABLES`` malloc
setting in the environment wins.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os

from absl import logging

#: XLA flags appended to ``XLA_FLAGS`` (each only if the user did not set that flag).
CPU_XLA_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume not yet
        return False


#: glibc ``mallopt`` settings of :func:`tune_malloc`: ``name -> (param, value, env variable)``.
#: ``M_TRIM_THRESHOLD = -1`` disables trimming (mallopt(3)); ``M_MMAP_MAX = 0`` disables mmap.
MALLOC_OPTIONS: dict[str, tuple[int, int, str]] = {
    "M_ARENA_MAX": (-8, 1, "MALLOC_ARENA_MAX"),
    "M_MMAP_MAX": (-4, 0, "MALLOC_MMAP_MAX_"),
    "M_TRIM_THRESHOLD": (-1, -1, "MALLOC_TRIM_THRESHOLD_"),
}


_MALLOC_APPLIED: dict[str, int] | None = None  # what tune_malloc set, once it ran


def _accelerator_expected() -> bool:
    """Whether JAX will likely run on something other than the CPU (checked without starting it)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    return any(importlib.util.find_spec(m) is not None for m in ("jax_plugins", "libtpu"))


def tune_malloc() -> dict[str, int]:
    """Sets :data:`MALLOC_OPTIONS` with glibc ``mallopt``; call before the first JAX computation.

    Returns:
      The settings applied: none off glibc, when an accelerator is expected, or after the
      backend started (a warning is logged); a setting whose environment variable (or any
      ``glibc.malloc`` tunable) the user set is left to the user.
    """
    global _MALLOC_APPLIED
    if _MALLOC_APPLIED is not None:
        return dict(_MALLOC_APPLIED)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to do
        return {}
    if _accelerator_expected():
        return {}
    if _backends_initialized():
        logging.warning(
            "cpu_runtime.tune_malloc() called after JAX started its backend; malloc unchanged "
            "(call it before the first JAX computation)"
        )
        return {}
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return {}
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = {}
    for name, (param, value, env) in MALLOC_OPTIONS.items():
        if env not in os.environ and mallopt(param, value) == 1:
            applied[name] = value
    _MALLOC_APPLIED = applied
    return dict(applied)


def malloc_applied() -> dict[str, int]:
    """The ``mallopt`` settings :func:`tune_malloc` applied in this process (empty if none)."""
    return dict(_MALLOC_APPLIED or {})


def configure(malloc: bool = True) -> list[str]:
    """Appends :data:`CPU_XLA_FLAGS` to ``XLA_FLAGS`` and (``malloc``) runs :func:`tune_malloc`;
    call before the first JAX computation.

    Returns:
      The flags added: none when the user's ``XLA_FLAGS`` already sets them, or when JAX's
      backend has already started (then a warning is logged, since flags are read only once).
    """
    if malloc:
        tune_malloc()
    current = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in CPU_XLA_FLAGS if f.split("=", 1)[0] not in current]
    if not missing:
        return []
    if _backends_initialized():
        logging.warning(
            "cpu_runtime.configure() called after JAX started its backend; XLA_FLAGS unchanged "
            "(call it before the first JAX computation)"
        )
        return []
    os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
    return missing
