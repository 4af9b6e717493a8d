"""Backend-specific kernels of the backbones' convolutions, chosen in one place.

Models call :func:`conv` and nothing else: it computes a conv unit's convolution with the kernels
the backend switch (:mod:`nm_hebb_jax.ops.backend`) picks for the ``depthwise_impl`` and
``conv_input_barrier`` settings. On the CPU backend (``'auto'``) depthwise convolutions run as
shifted slices with hand-written gradients (:mod:`nm_hebb_jax.ops.depthwise`) and convolution
inputs pass through an in-place barrier (:func:`materialize`); maps smaller than their kernel run
as one matrix product on every backend (:func:`conv2d`). Values and gradients match XLA's own
kernels (``tests/test_ops.py``); BENCHMARKS.md says what each one gains.
"""

from nm_hebb_jax.ops.backend import (
    CONV_INPUT_BARRIERS,
    DEPTHWISE_IMPLS,
    check_conv_input_barrier,
    check_depthwise_impl,
    cpu_kernels,
    resolve_conv_input_barrier,
    resolve_depthwise_impl,
)
from nm_hebb_jax.ops.convolution import conv, conv2d, conv2d_as_matmul, materialize
from nm_hebb_jax.ops.depthwise import depthwise_conv, depthwise_input_grad, depthwise_kernel_grad

__all__ = [
    "CONV_INPUT_BARRIERS",
    "DEPTHWISE_IMPLS",
    "check_conv_input_barrier",
    "check_depthwise_impl",
    "conv",
    "conv2d",
    "conv2d_as_matmul",
    "cpu_kernels",
    "depthwise_conv",
    "depthwise_input_grad",
    "depthwise_kernel_grad",
    "materialize",
    "resolve_conv_input_barrier",
    "resolve_depthwise_impl",
]
