"""The one backend switch: which convolution kernels the ``'auto'`` settings pick.

Two model settings choose how a conv unit computes (values and gradients are the same either
way, up to float32 summation order; only the speed changes):

- ``depthwise_impl`` (:data:`DEPTHWISE_IMPLS`): ``'shifts'`` (shifted slices with hand-written
  gradients, :mod:`nm_hebb_jax.ops.depthwise`) or ``'conv'`` (XLA's grouped convolution);
- ``conv_input_barrier`` (:data:`CONV_INPUT_BARRIERS`): pass a convolution's input through
  :func:`~nm_hebb_jax.ops.convolution.materialize` or not.

``'auto'`` picks the XLA:CPU kernels when :func:`cpu_kernels` says so (the CPU backend), XLA's own
elsewhere, where its compilers choose layouts and grouped convolutions are fast. Why the CPU
needs its own kernels, and by how much each helps: BENCHMARKS.md, "Method notes".
"""

from __future__ import annotations

import jax

#: Valid values of ``depthwise_impl`` (see :func:`~nm_hebb_jax.ops.depthwise.depthwise_conv`).
DEPTHWISE_IMPLS: tuple[str, ...] = ("auto", "conv", "shifts")

#: Valid values of ``conv_input_barrier`` (see :func:`~nm_hebb_jax.ops.convolution.materialize`).
CONV_INPUT_BARRIERS: tuple[str, ...] = ("auto", "on", "off")


def cpu_kernels() -> bool:
    """Whether ``'auto'`` settings pick the XLA:CPU kernels: on the CPU backend."""
    return jax.default_backend() == "cpu"


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {choices}")


def check_depthwise_impl(value: str) -> None:
    """Raises a one-line ValueError unless ``value`` is one of :data:`DEPTHWISE_IMPLS`."""
    _check("depthwise_impl", value, DEPTHWISE_IMPLS)


def check_conv_input_barrier(value: str) -> None:
    """Raises a one-line ``ValueError`` unless ``value`` is in :data:`CONV_INPUT_BARRIERS`."""
    _check("conv_input_barrier", value, CONV_INPUT_BARRIERS)


def resolve_depthwise_impl(impl: str) -> str:
    """``'auto'`` -> ``'shifts'`` with :func:`cpu_kernels`, ``'conv'`` elsewhere; checks the value.

    Raises:
      ValueError: ``impl`` is not one of :data:`DEPTHWISE_IMPLS`.
    """
    check_depthwise_impl(impl)
    if impl == "auto":
        return "shifts" if cpu_kernels() else "conv"
    return impl


def resolve_conv_input_barrier(value: str) -> bool:
    """``'auto'`` -> on with :func:`cpu_kernels`, off elsewhere; checks the value."""
    check_conv_input_barrier(value)
    if value == "auto":
        return cpu_kernels()
    return value == "on"
