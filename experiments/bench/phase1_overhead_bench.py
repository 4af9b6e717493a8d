r"""Where the NM-Hebb phase-1 step's extra time on XLA:CPU comes from (ResNet-18, batch 128).

  python experiments/bench/phase1_overhead_bench.py [--model resnet18] [--repeats 4]
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce \
      python experiments/bench/phase1_overhead_bench.py      # also without YNNPACK reductions

Times the trainer's plain phase-1 step for methods whose objectives differ by one thing:

  ``baseline``        cross-entropy only;
  ``hebb_only``       + the Hebbian term;
  ``ewc_only``        + the EWC term (the gradient reaches every parameter);
  ``ewc_no_grad``     ``ewc_only`` with the EWC penalty computed on ``stop_gradient(params)``:
                      the same forward values, no EWC gradient (diagnostic only, not a method);
  ``ewc_analytic``    ``ewc_only`` with the EWC gradient written out by hand (``custom_vjp``,
                      2 F̃ (θ − θ*)), to see whether autodiff's form of it matters;
  ``nm_hebb``         the whole plain phase-1 step (Hebbian term, gate and EWC term);
  ``NAME_donated``    any of these with the state donated (``donate_state='always'``, what GPU
                      and TPU runs do), which also aliases the hypergradient buffer that an
                      undonated plain step copies; named only with ``--variants``.

Turns of 3 consecutive steps per variant, round-robin; the first step of a turn is dropped.
Prints each median and its ratio to ``baseline`` measured in the same run. With ``--profile`` it
then traces 2 steps of each variant (``jax.profiler``, Perfetto JSON) and prints the time per
step spent in XLA's ``transpose*`` fusions (the inputs of the kernel-gradient convolutions).
Timings, not tests.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from step_bench import (  # noqa: E402
    make_config,
    prepare_phase,
    print_ratios,
    replaced,
    stepping,
    time_turns,
)

from nm_hebb_jax import cpu_runtime, losses, objectives  # noqa: E402
from nm_hebb_jax.train import sharding as S  # noqa: E402

_ORIGINAL = losses.ewc_penalty


def _no_grad(params, anchor, fisher, normalize=True):
    return _ORIGINAL(jax.lax.stop_gradient(params), anchor, fisher, normalize=normalize)


@jax.custom_vjp
def _analytic(params, anchor, fisher):
    return _ORIGINAL(params, anchor, fisher)


def _analytic_fwd(params, anchor, fisher):
    return _ORIGINAL(params, anchor, fisher), (params, anchor, fisher)


def _analytic_bwd(res, ct):
    params, anchor, fisher = res
    total = sum(jnp.sum(f) for f in jax.tree.leaves(fisher))
    total = jnp.where(total > 0, total, 1.0)
    grad = jax.tree.map(lambda p, a, f: ct * 2.0 * f * (p - a) / total, params, anchor, fisher)
    zeros = jax.tree.map(jnp.zeros_like, anchor)
    return grad, zeros, jax.tree.map(jnp.zeros_like, fisher)


_analytic.defvjp(_analytic_fwd, _analytic_bwd)

VARIANTS = {
    "baseline": ("baseline", None),
    "hebb_only": ("hebb_only", None),
    "ewc_only": ("ewc_only", None),
    "ewc_no_grad": ("ewc_only", _no_grad),
    "ewc_analytic": ("ewc_only", lambda p, a, f, normalize=True: _analytic(p, a, f)),
    "nm_hebb": ("nm_hebb", None),
}
#: Each variant also runs with the state donated (``NAME_donated``: ``donate_state='always'``).
VARIANTS.update({f"{n}_donated": v for n, v in VARIANTS.items()})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--variants", default=",".join(n for n in VARIANTS if "donated" not in n))
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    cpu_runtime.configure()
    mesh = S.make_mesh()
    steps = {}
    for name in names:
        method, penalty = VARIANTS[name]
        with replaced(objectives.losses, "ewc_penalty", penalty or _ORIGINAL):
            cfg = make_config(args.model, method, args.batch, "float32")
            cfg.donate_state = "always" if name.endswith("_donated") else "auto"
            step_for, start, step_args = prepare_phase(cfg, mesh)
            fn = step_for(start + 1).lower(*step_args).compile()  # the plain variant
        steps[name] = (fn, step_args)
    calls = {n: stepping(fn, a) for n, (fn, a) in steps.items()}
    for call in calls.values():
        jax.block_until_ready(call())
    times = time_turns(calls, args.repeats, 3)
    print(f"{args.model} batch {args.batch}  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print_ratios(times)
    if args.profile:
        for name, (fn, a) in steps.items():
            seconds = transpose_seconds(stepping(fn, a))
            print(f"{name:14s} transpose fusions {1e3 * seconds:7.1f} ms/step")


def transpose_seconds(call, steps: int = 2) -> float:
    """Seconds per step in XLA ``transpose*`` fusions, from a jax.profiler Perfetto trace."""
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(call())
        path = glob.glob(os.path.join(d, "**", "*.json.gz"), recursive=True)[0]
        with gzip.open(path) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and str(e.get("name", "")).startswith("transpose"):
            total["t"] += e["dur"]
    return total["t"] / 1e6 / steps


if __name__ == "__main__":
    main()
