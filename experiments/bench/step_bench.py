r"""Training-step benchmark: plain CE vs NM-Hebb phase 1 vs phase 2, same backbone, same run.

  python experiments/bench/step_bench.py --models resnet18,mobilenet_v2 --batch 128 --repeats 10
  python experiments/bench/step_bench.py --models resnet18 --batch 512 --dtype bfloat16   # GPU

For each backbone (full size) it builds the real train steps of the trainer, then times,
interleaved so machine load hits every variant alike:

  (a) ``ce``            the plain cross-entropy step (method ``baseline``),
  (b) ``p1_plain``      the NM-Hebb phase-1 step (Hebbian + gate + EWC with a non-zero Fisher),
      ``p1_hyper``      its hypergradient variant (runs 2 of every ``nm.hyper_every`` steps),
      ``p1_mean``       = (2·p1_hyper + (k−2)·p1_plain)/k, what a phase-1 step costs on average,
  (c) ``p2``            the phase-2 step (pairwise metric + CE + EWC on P×K batches),

and reports images/s, median/min/max step time, compile time, XLA's FLOP count of each step
(``compiled.cost_analysis()``), achieved FLOP/s and its fraction of an assumed peak, the ratios
p1_mean/ce and p2/ce measured in the same run, and peak memory (device peak on GPU, process peak
RSS on CPU). Prints a table and writes JSON (``--out``). Timings, not tests: they depend on the
machine; on CPU XLA's convolutions are slow (see BENCHMARKS.md).

The assumed CPU peak is cores × clock × 64 FP32 FLOP/cycle (two 512-bit FMA units); pass
``--peak-gflops`` for your machine. On GPU the default peak is the H100 SXM dense figure for the
dtype (989 TFLOP/s bf16, 67 TFLOP/s fp32 without TF32).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import numpy as np

from nm_hebb_jax.config_base import apply_smoke, get_base_config
from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.loop import Trainer, build_run
from nm_hebb_jax.train.state import init_ewc_state


def make_config(model: str, method: str, batch: int, dtype: str):
    c = get_base_config()
    apply_smoke(c)  # digits data (offline); the model is made full size again below
    c.model.name = model
    c.model.overrides = type(c.model.overrides)()
    c.model.dtype = dtype
    c.method = method
    c.batch_size = batch
    c.data.val_size = 200
    c.ewc.fisher_examples = 64
    c.nm.hyper_every = 10
    return c


def cpu_peak_gflops() -> tuple[float, str]:
    mhz = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    mhz = max(mhz, float(line.split(":")[1]))
    except OSError:
        pass
    cores = os.cpu_count() or 1
    ghz = mhz / 1000 if mhz else 2.0
    return cores * ghz * 64, f"{cores} cores x {ghz:.2f} GHz x 64 FP32 FLOP/cycle (2x AVX-512 FMA)"


def build_variants(model: str, batch: int, dtype: str):
    """Compiled step functions and their inputs for one backbone."""
    variants = {}
    mesh = S.make_mesh()
    for method, phase in (("baseline", 1), ("nm_hebb", 1), ("nm_hebb", 2)):
        cfg = make_config(model, method, batch, dtype)
        run = build_run(cfg, mesh=mesh)
        trainer = Trainer(run, "/nonexistent-not-written")
        params, bs = trainer.init_variables()
        plan, tx, step_for, start, _ = trainer.phase_setup(phase)
        state = trainer.make_state(params, bs, start, tx, plan)
        ewc = (
            trainer.compute_ewc(state, refresh_index=0)
            if plan.uses_ewc
            else jax.device_put(init_ewc_state(state.params["backbone"]), trainer.repl)
        )
        batch_np = run.dataset.train_batch(0, batch_size=batch, balanced=plan.balanced)
        gbatch = S.global_batch(batch_np, mesh)
        if method == "baseline":
            names = {"ce": step_for(start)}
        elif phase == 1:
            names = {"p1_plain": step_for(start + 1), "p1_hyper": step_for(start)}
        else:
            names = {"p2": step_for(start)}
        for name, fn in names.items():
            t0 = time.perf_counter()
            compiled = fn.lower(state, ewc, gbatch).compile()
            compile_s = time.perf_counter() - t0
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            flops = float(cost.get("flops", 0.0)) if cost else 0.0
            variants[name] = {
                "fn": compiled,
                "args": (state, ewc, gbatch),
                "compile_s": compile_s,
                "flops": flops,
            }
    return variants


def bench_model(model, batch, dtype, repeats, warmup):
    variants = build_variants(model, batch, dtype)
    for v in variants.values():
        for _ in range(warmup):
            jax.block_until_ready(v["fn"](*v["args"]))
    times = {n: [] for n in variants}
    for _ in range(repeats):
        for name, v in variants.items():
            t0 = time.perf_counter()
            jax.block_until_ready(v["fn"](*v["args"]))
            times[name].append(time.perf_counter() - t0)
    return variants, times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak-gflops", type=float, default=0.0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    backend = jax.default_backend()
    if args.peak_gflops:
        peak, peak_how = args.peak_gflops, "given with --peak-gflops"
    elif backend == "cpu":
        peak, peak_how = cpu_peak_gflops()
    else:
        peak = 989e3 if args.dtype == "bfloat16" else 67e3
        peak_how = f"H100 SXM dense {args.dtype} datasheet figure"
    report = {
        "backend": backend,
        "devices": [str(d) for d in jax.devices()],
        "batch": args.batch,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "peak_gflops": peak,
        "peak_assumption": peak_how,
        "models": {},
    }
    for model in [m for m in args.models.split(",") if m]:
        variants, times = bench_model(model, args.batch, args.dtype, args.repeats, args.warmup)
        k = 10
        med = {n: float(np.median(t)) for n, t in times.items()}
        med["p1_mean"] = (2 * med["p1_hyper"] + (k - 2) * med["p1_plain"]) / k
        rows = {}
        for name in ("ce", "p1_plain", "p1_hyper", "p1_mean", "p2"):
            t = med[name]
            flops = (
                variants[name]["flops"]
                if name in variants
                else (2 * variants["p1_hyper"]["flops"] + (k - 2) * variants["p1_plain"]["flops"])
                / k
            )
            rows[name] = {
                "median_s": t,
                "min_s": float(min(times[name])) if name in times else None,
                "max_s": float(max(times[name])) if name in times else None,
                "images_per_s": args.batch / t,
                "compile_s": variants[name]["compile_s"] if name in variants else None,
                "gflop_per_step": flops / 1e9,
                "achieved_gflops": flops / 1e9 / t,
                "fraction_of_peak": flops / 1e9 / t / peak,
            }
        mem = None
        if backend != "cpu":
            stats = jax.devices()[0].memory_stats() or {}
            mem = stats.get("peak_bytes_in_use")
        report["models"][model] = {
            "steps": rows,
            "p1_mean_over_ce": med["p1_mean"] / med["ce"],
            "p1_hyper_over_ce": med["p1_hyper"] / med["ce"],
            "p2_over_ce": med["p2"] / med["ce"],
            "peak_memory_bytes": mem,
            "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        print(f"\n{model}  batch {args.batch}  {args.dtype}  {backend}  ({args.repeats} repeats)")
        print(
            f"{'step':10s} {'median s':>9s} {'min':>7s} {'max':>7s} {'img/s':>8s} "
            f"{'compile s':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'%peak':>6s}"
        )
        for name, r in rows.items():
            mn = f"{r['min_s']:.3f}" if r["min_s"] is not None else "-"
            mx = f"{r['max_s']:.3f}" if r["max_s"] is not None else "-"
            cs = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
            print(
                f"{name:10s} {r['median_s']:9.3f} {mn:>7s} {mx:>7s} {r['images_per_s']:8.1f} "
                f"{cs:>9s} {r['gflop_per_step']:8.1f} {r['achieved_gflops']:8.1f} "
                f"{100 * r['fraction_of_peak']:6.1f}"
            )
        m = report["models"][model]
        print(
            f"ratios (same run): p1_mean/ce {m['p1_mean_over_ce']:.3f}  "
            f"p1_hyper/ce {m['p1_hyper_over_ce']:.3f}  p2/ce {m['p2_over_ce']:.3f}"
        )
    print(f"\npeak assumed: {peak:.0f} GFLOP/s ({peak_how})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
