"""Tests of nm_hebb_jax.ops: the backend switch, and each CPU kernel against XLA's own (values,
gradients, and the XLA:CPU fusion decision it exists for)."""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nm_hebb_jax import ops
from nm_hebb_jax.models import ConvBN, UnitConfig
from nm_hebb_jax.ops import conv2d, depthwise_conv, depthwise_input_grad, depthwise_kernel_grad
from nm_hebb_jax.ops.depthwise import _depthwise_sum


def test_auto_settings_pick_the_cpu_kernels_on_the_cpu_backend_only():
    cpu = jax.default_backend() == "cpu"
    assert ops.cpu_kernels() == cpu
    assert ops.resolve_depthwise_impl("auto") == ("shifts" if cpu else "conv")
    assert ops.resolve_conv_input_barrier("auto") == cpu
    assert (
        ops.resolve_depthwise_impl("conv") == "conv"
        and ops.resolve_conv_input_barrier("off") is False
    )
    for bad, check in (("fft", ops.check_depthwise_impl), ("yes", ops.check_conv_input_barrier)):
        with pytest.raises(ValueError, match=repr(bad)):
            check(bad)


@pytest.mark.parametrize("groups,impl", [(1, "auto"), (3, "auto"), (6, "conv"), (6, "shifts")])
def test_conv_is_the_grouped_convolution_whichever_kernel_it_picks(groups, impl):
    """``ops.conv`` (what every conv unit calls): depthwise kernels by ``depthwise_impl``, the
    others with or without the input barrier, all equal to lax's convolution."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 6 // groups, 6))
    want = jax.lax.conv_general_dilated(
        x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )  # fmt: skip
    for barrier in ("on", "off"):
        got = ops.conv(x, kernel, 2, groups, depthwise_impl=impl, input_barrier=barrier)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "h,w,k,strides",
    [(1, 1, 3, 1), (2, 2, 3, 1), (2, 3, 3, 2), (2, 2, 3, 2), (4, 4, 5, 1), (3, 2, 5, 2)],
)
def test_conv2d_on_maps_smaller_than_the_kernel_is_the_convolution(h, w, k, strides):
    """Maps smaller than the kernel go through one matrix product (XLA:CPU runs the convolution
    far slower there): same values and gradients as lax's convolution, and no convolution left in
    the compiled program; maps as large as the kernel keep the convolution."""
    kx, kw, kg = jax.random.split(jax.random.key(h * 100 + w * 10 + k + strides), 3)
    x = jax.random.normal(kx, (3, h, w, 6))
    kernel = jax.random.normal(kw, (k, k, 6, 5))
    pad = (k - 1) // 2

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, (strides, strides), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip

    want, vjp_want = jax.vjp(reference, x, kernel)
    got, vjp_got = jax.vjp(lambda x, kernel: conv2d(x, kernel, strides), x, kernel)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, want.shape)
    for a, b in zip(vjp_got(g), vjp_want(g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    def convolutions(size):
        xs = jnp.zeros((3, size, size, 6))
        hlo = jax.jit(lambda x: conv2d(x, kernel, strides)).lower(xs).compile().as_text()
        return hlo.count(" convolution(")

    assert convolutions(k - 1) == 0 and convolutions(k) == 1


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("k,size", [(3, 7), (3, 8), (5, 6), (2, 7), (4, 8)])
def test_depthwise_shifts_equals_grouped_conv(strides, k, size):
    """The CPU default 'shifts' depthwise conv: same values and gradients as lax's grouped conv
    (even kernels too: both pad (k - 1) // 2 on each side)."""
    kx, kw, kg = jax.random.split(jax.random.key(strides * 10 + k + size), 3)
    x = jax.random.normal(kx, (2, size, size, 5))
    w = jax.random.normal(kw, (k, k, 1, 5))
    y_conv = depthwise_conv(x, w, strides, "conv")
    y_shift = depthwise_conv(x, w, strides, "shifts")
    out = (size + 2 * ((k - 1) // 2) - k) // strides + 1  # ceil(size / strides) for odd k
    assert y_shift.shape == y_conv.shape == (2, out, out, 5)
    np.testing.assert_allclose(y_shift, y_conv, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, y_conv.shape)

    def grads(impl):
        return jax.grad(lambda x, w: jnp.sum(depthwise_conv(x, w, strides, impl) * g), (0, 1))(x, w)

    for a, b in zip(grads("shifts"), grads("conv"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk_examples", [1, 2, 6])
@pytest.mark.parametrize("strides", [1, 2])
def test_depthwise_kernel_grad_chunks_equal_grouped_conv(chunk_examples, strides):
    """The batch-chunked kernel gradient (scan over 6 / 3 chunks, or none) is the grouped
    convolution's, in float32 and from bfloat16 inputs."""
    from nm_hebb_jax.ops import conv2d

    kx, kg = jax.random.split(jax.random.key(chunk_examples + 10 * strides))
    x = jax.random.normal(kx, (6, 9, 9, 4))
    w0 = jnp.zeros((3, 3, 1, 4))
    y, vjp = jax.vjp(lambda w: conv2d(x, w, strides, groups=4), w0)
    g = jax.random.normal(kg, y.shape)
    (want,) = vjp(g)
    per_example = (x[0].size + g[0].size) * 4
    got = depthwise_kernel_grad(x, g, 3, strides, chunk_bytes=chunk_examples * per_example)
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    x16, g16 = x.astype(jnp.bfloat16), g.astype(jnp.bfloat16)
    chunk16 = chunk_examples * per_example // 2
    got16 = depthwise_kernel_grad(x16, g16, 3, strides, chunk_bytes=chunk16)
    assert got16.dtype == jnp.float32
    np.testing.assert_allclose(got16, want, rtol=5e-2, atol=5e-2 * float(jnp.abs(want).max()))


@pytest.mark.parametrize(
    "k,strides,size",
    [(3, 1, 8), (3, 1, 9), (3, 2, 8), (3, 2, 9), (5, 2, 7), (5, 1, 6)]
    + [(1, 1, 5), (1, 2, 5), (2, 1, 8), (2, 2, 7), (4, 1, 7), (4, 2, 8)],
)
def test_depthwise_input_grad_is_autodiffs_transpose(k, strides, size):
    """The flipped-kernel input gradient equals autodiff's transpose of the shifted slices, for
    odd and even sizes, kernels 1 to 5 (even kernels pad one less after than before), strides 1
    and 2."""
    x = jax.random.normal(jax.random.key(0), (2, size, size, 5))
    w = jax.random.normal(jax.random.key(1), (k, k, 1, 5))
    y, vjp = jax.vjp(lambda x: _depthwise_sum(x, w, strides), x)
    g = jax.random.normal(jax.random.key(2), y.shape)
    (want,) = vjp(g)
    got = depthwise_input_grad(g, w, strides, (size, size))
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _fusion_bodies(hlo: str) -> dict[str, str]:
    """Compiled HLO text -> ``{fusion instruction name: text of the computation it calls}``."""
    bodies = dict(re.findall(r"^(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S))
    calls = re.findall(r"%([\w.\-]+) = [^\n]* fusion\([^\n]*calls=(%[\w.\-]+)", hlo)
    return {name: bodies.get(callee, "") for name, callee in calls}


def _transposes_recomputing_relu(barrier: str) -> int:
    """How many transpose fusions in the compiled gradient of conv(relu(bn(conv(x)))) recompute
    the ReLU (a ``maximum``) instead of reading the stored activation."""

    class TwoConvs(nn.Module):
        @nn.compact
        def __call__(self, x):
            unit = UnitConfig(conv_input_barrier=barrier)
            x = ConvBN(16, 3, unit=unit, name="a")(x, True)
            return ConvBN(16, 3, act=None, use_norm=False, unit=unit, name="b")(x, True)

    x = jax.random.normal(jax.random.key(0), (32, 16, 16, 8))
    net = TwoConvs()
    variables = net.init(jax.random.key(1), x)

    def loss(params):
        out, _ = net.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(out**2)

    hlo = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
    fusions = _fusion_bodies(hlo)
    return sum(
        " maximum(" in body for name, body in fusions.items() if name.startswith("transpose")
    )


def _pads_fused_with_the_cotangent(depthwise, strides: int) -> int:
    """The most ``pad`` operations in one XLA:CPU fusion of the input gradient of
    ``sum(sin(depthwise(x, w, strides)))`` that also computes the cotangent (``cos``): each such
    pad re-evaluates the cotangent at shifted positions."""
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 8))
    w = jax.random.normal(jax.random.key(1), (3, 3, 1, 8))
    hlo = (
        jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(depthwise(x, w, strides)))))
        .lower(x)
        .compile()
        .as_text()
    )
    return max(
        (body.count(" pad(") for body in _fusion_bodies(hlo).values() if " cosine(" in body),
        default=0,
    )


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion decision")
@pytest.mark.parametrize("strides", [1, 2])
def test_depthwise_input_grad_does_not_recompute_the_cotangent_per_tap(strides):
    """Autodiff of the shifted slices pads ``g * tap`` once per tap, and XLA:CPU fuses the
    cotangent's producer into each pad (recomputing it 9 times); ``'shifts'``'s flipped-kernel
    input gradient pads the cotangent once (twice for stride 2: dilation, then borders)."""
    assert _pads_fused_with_the_cotangent(_depthwise_sum, strides) >= 9
    shifts = functools.partial(depthwise_conv, impl="shifts")
    assert _pads_fused_with_the_cotangent(shifts, strides) <= 2


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion decision")
def test_conv_input_barrier_stops_xla_cpu_recomputing_the_activation_in_transposes():
    """The reason for the barrier (BENCHMARKS.md): without it XLA:CPU fuses BatchNorm + ReLU
    into the transpose that feeds the kernel gradient; with it the transpose reads the stored
    activation. If a new XLA stops doing the former, the barrier can go."""
    assert _transposes_recomputing_relu("off") >= 1
    assert _transposes_recomputing_relu("on") == 0
