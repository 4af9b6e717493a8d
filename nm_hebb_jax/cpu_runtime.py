"""CPU runtime default of the trainer: XLA's own convolutions instead of YNNPACK's.

jaxlib 0.10.2 sends every CPU convolution to YNNPACK by default. On the 2-core AVX-512
development machine XLA's own convolution is 2.1x faster forward and 3.8x faster for the kernel
gradient of a 3x3 64->64 layer (BENCHMARKS.md, ``experiments/bench/conv_micro.py``); a ResNet-18
training step at batch 128 goes from 2.66 s to 1.80 s (``torch_reference.py``).
:func:`configure` appends :data:`CPU_XLA_FLAGS` to ``XLA_FLAGS`` before JAX starts its backend;
the trainer, the evaluation CLI and the benchmarks call it (``config.cpu_tuning``, default True).

The flag is an ``xla_cpu_`` flag: GPU and TPU computations are unaffected. CPU results change at
float32 rounding level (another convolution algorithm). A user's own ``XLA_FLAGS`` entry for the
same flag wins. Library users who import the losses into their own pipeline are not affected
unless they call :func:`configure` (or set the flag) themselves.
"""

from __future__ import annotations

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


def configure() -> list[str]:
    """Appends :data:`CPU_XLA_FLAGS` to ``XLA_FLAGS``; call before the first JAX computation.

    Returns:
      The flags added: none when the user's ``XLA_FLAGS`` already sets them, or when JAX's
      backend has already started (then a warning is logged, since flags are read only once).
    """
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
