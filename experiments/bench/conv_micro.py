r"""Single-layer XLA:CPU measurements behind the CPU defaults (BENCHMARKS.md, notes table).

  python experiments/bench/conv_micro.py            # both XLA conv back-ends, all cases
  python experiments/bench/conv_micro.py --out experiments/bench/results/conv_micro_cpu.json

Each case is one jitted function on fixed random inputs, timed as the median of ``--repeats``
calls after two warm-up calls. Cases, on ResNet-18 / MobileNet-v2 layer shapes at batch 128:

  dense_{fwd,dx,dw}     3x3 conv 64->64 on 32x32: forward, input gradient, kernel gradient;
  dense_im2col_fwd      the same forward as 9 shifted slices concatenated + one matrix product;
  dense_dw_taps         the kernel gradient as 9 per-tap matrix products (no transposes);
  dense_dw_after_bn     kernel gradient when its input is BN-scale+ReLU of the stored map
                        (XLA fuses that recomputation into the transpose the gradient needs);
  dense_layer_after_bn{,_barrier}   what a training step does with such a layer: the forward
                        conv of BN-scale+ReLU of the stored map and its kernel gradient, without
                        and with :func:`nm_hebb_jax.models.layers.materialize` on the conv input
                        (``conv_input_barrier``: the transpose reads the stored input);
  dense_small_map{,_matmul}_{fwd,dx}   3x3 conv 512->512 on VGG-11's last 2x2 maps, as lax's
                        convolution (which XLA swaps operands of, the map being smaller than the
                        kernel) and as :func:`nm_hebb_jax.models.layers.conv2d` (one matrix
                        product there);
  depthwise_{conv,shifts}_{fwd,dx,dw}   3x3 depthwise conv, 144 channels on 32x32, as lax's
                        grouped convolution and as :func:`nm_hebb_jax.models.layers.depthwise_conv`
                        ``'shifts'``;
  depthwise_shifts_dw_one_chunk   the 'shifts' kernel gradient's reduction over the whole batch
                        at once (``depthwise_kernel_grad`` with no chunking), against the
                        default cache-sized batch chunks;
  depthwise_shifts_layer{,_autodiff_dx,_autodiff_dx_barrier}   what a training step does with
                        a MobileNet-v2 depthwise unit: 'shifts' depthwise conv, training-mode
                        BatchNorm and ReLU6, forward and the input and kernel gradients. The
                        input gradient is the default flipped-kernel sum
                        (:func:`nm_hebb_jax.models.layers.depthwise_input_grad`), or autodiff's
                        transpose of the shifted slices, where XLA:CPU recomputes BatchNorm's
                        backward once per tap, or that transpose reading a stored cotangent
                        (:func:`nm_hebb_jax.models.layers.materialize`; the default before the
                        flipped kernel); ``depthwise_grad_bench.py`` times the three in a
                        whole training step.

The whole set runs three times, in subprocesses, since XLA reads its flags once per process:
``ynnpack_default`` (jaxlib's default, YNNPACK convolutions), ``cpu_tuning``
(``nm_hebb_jax.cpu_runtime.CPU_XLA_FLAGS``: XLA's own) and ``cpu_runtime`` (those flags plus
:func:`nm_hebb_jax.cpu_runtime.tune_malloc`, what a full-size run uses: without it every fresh
output buffer is page-faulted in again, which dominates the memory-bound cases). Timings, not
tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

DN = ("NHWC", "HWIO", "NHWC")


def cases():
    import jax
    import jax.numpy as jnp
    from depthwise_grad_bench import autodiff_input_grad  # this script's folder

    from nm_hebb_jax.models.layers import conv2d, depthwise_conv, depthwise_kernel_grad

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)

    def dx(g, w, x):
        return jax.vjp(lambda x: conv(x, w), x)[1](g)[0]

    def dw(g, x, w):
        return jax.vjp(lambda w: conv(x, w), w)[1](g)[0]

    def im2col_fwd(x, w):
        n, h, wd, c = x.shape
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = [xp[:, i : i + h, j : j + wd, :] for i in range(3) for j in range(3)]
        out = jnp.concatenate(cols, -1).reshape(-1, 9 * c) @ w.reshape(9 * c, -1)
        return out.reshape(n, h, wd, -1)

    def dw_taps(g, x):
        n, h, wd, c = x.shape
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        gm = g.reshape(-1, g.shape[-1])
        taps = [
            jax.lax.dot_general(
                xp[:, i : i + h, j : j + wd, :].reshape(-1, c), gm, (((0,), (0,)), ((), ()))
            )
            for i in range(3)
            for j in range(3)
        ]
        return jnp.stack(taps).reshape(3, 3, c, -1)

    def dw_after_bn(g, x, s, w):
        return dw(g, jax.nn.relu(x * s + s), w)

    def layer_after_bn(barrier):
        def f(g, x, s, w):
            xr = jax.nn.relu(x * s + s)
            y, vjp = jax.vjp(lambda w: conv2d(xr, w, 1, input_barrier=barrier), w)
            return y, vjp(g)[0]

        return f

    key = iter(jax.random.split(jax.random.key(0), 12))
    x = jax.random.normal(next(key), (128, 32, 32, 64))
    w = jax.random.normal(next(key), (3, 3, 64, 64)) * 0.05
    g = jax.random.normal(next(key), (128, 32, 32, 64))
    s = jnp.full((64,), 1.1)
    xd = jax.random.normal(next(key), (128, 32, 32, 144))
    wd = jax.random.normal(next(key), (3, 3, 1, 144)) * 0.3
    gd = jax.random.normal(next(key), (128, 32, 32, 144))

    def conv2d_s1(x, w):
        return conv2d(x, w, 1)

    def dwise(impl):
        return lambda x, w: depthwise_conv(x, w, 1, impl)

    def autodiff_dx(store_cotangent):
        shifts = autodiff_input_grad(store_cotangent)
        return lambda x, w: shifts(x, w, 1)

    def dw_layer(dwc):
        def unit(x, w, s):
            y = dwc(x, w)
            mean, var = jnp.mean(y, (0, 1, 2)), jnp.var(y, (0, 1, 2))
            return jnp.clip((y - mean) * jax.lax.rsqrt(var + 1e-5) * s + s, 0.0, 6.0)

        def f(g, x, w, s):
            out, vjp = jax.vjp(lambda x, w: unit(x, w, s), x, w)
            return out, vjp(g)

        return f

    out = {
        "dense_fwd": (conv, (x, w)),
        "dense_dx": (dx, (g, w, x)),
        "dense_dw": (dw, (g, x, w)),
        "dense_im2col_fwd": (im2col_fwd, (x, w)),
        "dense_dw_taps": (dw_taps, (g, x)),
        "dense_dw_after_bn": (dw_after_bn, (g, x, s, w)),
        "dense_layer_after_bn": (layer_after_bn(False), (g, x, s, w)),
        "dense_layer_after_bn_barrier": (layer_after_bn(True), (g, x, s, w)),
    }
    for impl in ("conv", "shifts"):
        f = dwise(impl)
        out[f"depthwise_{impl}_fwd"] = (f, (xd, wd))
        out[f"depthwise_{impl}_dx"] = (
            lambda g, w, x, f=f: jax.vjp(lambda x: f(x, w), x)[1](g)[0],
            (gd, wd, xd),
        )
        out[f"depthwise_{impl}_dw"] = (
            lambda g, x, w, f=f: jax.vjp(lambda w: f(x, w), w)[1](g)[0],
            (gd, xd, wd),
        )
    out["depthwise_shifts_dw_one_chunk"] = (
        lambda g, x: depthwise_kernel_grad(x, g, 3, 1, chunk_bytes=1 << 62),
        (gd, xd),
    )
    xs = jax.random.normal(next(key), (128, 2, 2, 512))
    ws = jax.random.normal(next(key), (3, 3, 512, 512)) * 0.02
    gs = jax.random.normal(next(key), (128, 2, 2, 512))
    for name, f in (("dense_small_map", conv), ("dense_small_map_matmul", conv2d_s1)):
        out[f"{name}_fwd"] = (f, (xs, ws))
        out[f"{name}_dx"] = (
            lambda g, w, x, f=f: jax.vjp(lambda x: f(x, w), x)[1](g)[0],
            (gs, ws, xs),
        )
    sd = jnp.full((144,), 1.1)
    out["depthwise_shifts_layer"] = (dw_layer(dwise("shifts")), (gd, xd, wd, sd))
    out["depthwise_shifts_layer_autodiff_dx"] = (dw_layer(autodiff_dx(False)), (gd, xd, wd, sd))
    out["depthwise_shifts_layer_autodiff_dx_barrier"] = (
        dw_layer(autodiff_dx(True)),
        (gd, xd, wd, sd),
    )
    return out


def run_cases(repeats: int) -> dict:
    import jax

    res = {}
    for name, (fn, args) in cases().items():
        c = jax.jit(fn).lower(*args).compile()
        for _ in range(2):
            jax.block_until_ready(c(*args))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(c(*args))
            times.append(time.perf_counter() - t0)
        res[name] = {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * min(times)}
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default="")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--malloc", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        if args.malloc:
            from nm_hebb_jax.cpu_runtime import tune_malloc

            tune_malloc()
        print(json.dumps(run_cases(args.repeats)))
        return
    from nm_hebb_jax.cpu_runtime import CPU_XLA_FLAGS

    report = {}
    flags = " ".join(CPU_XLA_FLAGS)
    for label, xla_flags, malloc in (
        ("ynnpack_default", "", []),
        ("cpu_tuning", flags, []),
        ("cpu_runtime", flags, ["--malloc"]),
    ):
        env = {**os.environ, "XLA_FLAGS": xla_flags}
        worker = [sys.executable, os.path.abspath(__file__), "--worker", *malloc]
        out = subprocess.run(
            [*worker, "--repeats", str(args.repeats)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        report[label] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'case':38s} {'YNNPACK ms':>11s} {'cpu_tuning ms':>14s} {'+ malloc ms':>12s}")
    for name in report["cpu_tuning"]:
        a, b, c = (report[k][name]["median_ms"] for k in report)
        print(f"{name:38s} {a:11.1f} {b:14.1f} {c:12.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
