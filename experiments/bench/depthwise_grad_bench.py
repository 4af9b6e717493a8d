r"""The 'shifts' depthwise input gradient in a whole training step (MobileNet-v2, batch 128).

  python experiments/bench/depthwise_grad_bench.py [--model mobilenet_v2] [--repeats 6] \
      [--out experiments/bench/results/depthwise_grad_bench_cpu_mobilenet_v2_b128.json]

Compiles the trainer's CE step three times in one process, with the input gradient of
:func:`nm_hebb_jax.models.layers.depthwise_conv` ``'shifts'`` written three ways:

  ``flipped_kernel``       the default: the cotangent correlated with the flipped kernel
                           (:func:`nm_hebb_jax.models.layers.depthwise_input_grad`);
  ``autodiff_stored``      autodiff's transpose of the shifted slices, reading a cotangent kept in
                           memory (:func:`nm_hebb_jax.models.layers.materialize`): the default
                           before the flipped kernel;
  ``autodiff``             autodiff's transpose with nothing stored, where XLA:CPU fuses the
                           cotangent's producer (BatchNorm's backward, the ReLU6 mask) into each
                           of the k*k shifted copies.

The kernel gradient is the default one in all three, and the depthwise layers use ``'shifts'``
on every backend (``'auto'`` picks it on CPU only). Turns of 3 consecutive steps per variant,
round-robin; the first step of a turn is dropped. Prints each median and its ratio to the first
variant, measured in the same run (conv_micro.py times the same three on one depthwise unit).
Timings, not tests.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from step_bench import (  # noqa: E402
    make_config,
    prepare_phase,
    print_ratios,
    replaced,
    stepping,
    time_turns,
)

from nm_hebb_jax import cpu_runtime  # noqa: E402
from nm_hebb_jax.models import layers  # noqa: E402
from nm_hebb_jax.train import sharding as S  # noqa: E402


def autodiff_input_grad(store_cotangent: bool):
    """``layers._depthwise_shifts`` with autodiff's transpose of the shifted-slice sum as the
    input gradient (of a stored cotangent if ``store_cotangent``) and the default kernel
    gradient; same signature, same forward."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def shifts(x, kernel, strides):
        return layers._depthwise_sum(x, kernel, strides)

    def fwd(x, kernel, strides):
        return layers._depthwise_sum(x, kernel, strides), (x, kernel)

    def bwd(strides, residuals, g):
        x, kernel = residuals
        g = layers.materialize(g) if store_cotangent else g
        dx = jax.vjp(lambda x: layers._depthwise_sum(x, kernel, strides), x)[1](g)[0]
        dw = layers.depthwise_kernel_grad(x, g, kernel.shape[0], strides)
        return dx, dw.astype(kernel.dtype)

    shifts.defvjp(fwd, bwd)
    return shifts


VARIANTS = {
    "flipped_kernel": lambda: layers._depthwise_shifts,  # the default, unchanged
    "autodiff_stored": functools.partial(autodiff_input_grad, True),
    "autodiff": functools.partial(autodiff_input_grad, False),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="")
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    cpu_runtime.configure()
    mesh = S.make_mesh()
    calls = {}
    for name in names:
        with replaced(layers, "_depthwise_shifts", VARIANTS[name]()):
            cfg = make_config(args.model, "baseline", args.batch, "float32")
            cfg.model.overrides.depthwise_impl = "shifts"  # 'auto' picks lax's conv off CPU
            step_for, start, step_args = prepare_phase(cfg, mesh)
            fn = step_for(start).lower(*step_args).compile()
        calls[name] = stepping(fn, step_args)
    for call in calls.values():
        jax.block_until_ready(call())
    times = time_turns(calls, args.repeats, 3)
    print(f"{args.model} batch {args.batch}, CE step, {args.repeats} turns x 2 counted steps")
    rows = print_ratios(times)
    if args.out:
        info = {"model": args.model, "batch": args.batch, "repeats": args.repeats}
        with open(args.out, "w") as f:
            json.dump({**info, "jax": jax.__version__, "variants": rows}, f, indent=1)


if __name__ == "__main__":
    main()
