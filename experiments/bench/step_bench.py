r"""Training-step benchmark: plain CE vs NM-Hebb phase 1 vs phase 2, same backbone, same run.

  python experiments/bench/step_bench.py --models resnet18,mobilenet_v2 --batch 128 --repeats 10
  python experiments/bench/step_bench.py --models resnet18 --repeats 5 --windows 8
  python experiments/bench/step_bench.py --models resnet18 --batch 512 --dtype bfloat16   # GPU

For each backbone (full size) it builds the real train steps of the trainer, then times,
interleaved so machine load hits every variant alike:

  (a) ``ce``            the plain cross-entropy step (method ``baseline``),
  (b) ``p1_plain``      the NM-Hebb phase-1 step (Hebbian + gate + EWC with a non-zero Fisher),
      ``p1_hyper``      its exact hypergradient variant (``nm.hyper_g_r='recompute'``, the
                        default: 2 of every ``nm.hyper_every`` steps),
      ``p1_mean``       = (2·p1_hyper + (k−2)·p1_plain)/k, what a phase-1 step costs on average,
      ``p1_store``, ``p1_apply``, ``p1_mean_reuse``: the same with ``nm.hyper_g_r='reuse'``
                        (one step stores g_R, the next applies the stored one without a g_R pass),
  (c) ``p2``            the phase-2 step (pairwise metric + CE + EWC on P×K batches),

Variants take round-robin turns of ``--steps-per-turn`` consecutive steps; the first step of a
turn is not counted (see torch_reference.py). ``p1_mean`` is computed from the turns' medians;
``--windows N`` also measures it directly: N rounds in which ``ce``, ``p1`` and ``p1_reuse`` each
run one window of ``nm.hyper_every`` consecutive steps after an uncounted entry step, ``p1`` and
``p1_reuse`` switching between their compiled variants in the trainer's order (one full
hypergradient cycle, :func:`phase1_schedule`), and each window's time is divided by the ``ce``
window of the same round (paired ratios: median and min-max over rounds; the JSON also keeps
every step time and the median at each position of the window). Reported: images/s,
median/min/max step time, compile time, model FLOPs per step (:func:`model_train_flops`;
XLA's ``cost_analysis()`` count is kept in the JSON as ``xla_gflop_per_step``), achieved
FLOP/s and its fraction of the peak, the ratios to ``ce`` measured in the same run, and peak
memory (device peak on GPU, process peak RSS on CPU). Prints a table and writes JSON
(``--out``). Timings, not tests: they depend on the machine.
``nm_hebb_jax.cpu_runtime.configure()`` is applied first, as in ``main.py``
(``--no-cpu-tuning`` skips it).

The CPU peak is measured in the run (:func:`measured_gemm_gflops`, a 2048x2048 FP32 XLA matmul);
pass ``--peak-gflops`` to use another. On GPU the default peak is the H100 SXM dense figure for
the dtype (989 TFLOP/s bf16, 67 TFLOP/s fp32 without TF32).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import time
from collections.abc import Callable

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from nm_hebb_jax import cpu_runtime
from nm_hebb_jax.config_base import get_base_config
from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.ewc import init_ewc_state
from nm_hebb_jax.train.hypergradient import hyper_variant
from nm_hebb_jax.train.loop import Trainer, build_run

#: ``nm.hyper_every`` of the benchmarked phase-1 schedule (the config default).
HYPER_EVERY = 10
#: The phase-1 schedule windows of ``--windows`` and the ``nm.hyper_g_r`` mode each follows.
WINDOW_MODES = {"p1": "recompute", "p1_reuse": "reuse"}


def make_config(
    model: str,
    method: str,
    batch: int,
    dtype: str,
    g_r_mode: str = "recompute",
    *,
    smoke: bool = False,
):
    """A full-size run's config (CPU runtime and model) on the bundled digits data (offline);
    ``smoke``: the backbone's tiny variant (to check the script runs, not to time it)."""
    c = get_base_config()
    c.data.source = c.data.name = "digits"
    c.model.name = model
    c.model.smoke = smoke
    c.model.dtype = dtype
    c.method = method
    c.batch_size = batch
    c.data.val_size = 200
    c.ewc.fisher_examples = 64
    c.nm.hyper_every = HYPER_EVERY
    c.nm.hyper_g_r = g_r_mode
    return c


def _eqn_flops(eqn) -> float:
    """2 x multiply-adds of one conv or dot equation (0 for anything else)."""
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        out = eqn.outvars[0].aval.shape
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
        per_output = np.prod([rhs[d] for d in spec[1:]])  # in-features per group x window
        return 2.0 * float(np.prod(out)) * float(per_output)
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return (
            2.0
            * float(np.prod(eqn.outvars[0].aval.shape))
            * float(np.prod([lhs[d] for d in contract]))
        )
    return 0.0


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _jaxpr_flops(sub)
    return total


def model_train_flops(
    model: str, batch: int, image_size: int = 32, num_classes: int = 10, *, smoke: bool = False
) -> float:
    """Model FLOPs of one training step: 3 x the forward pass's conv + dense FLOPs.

    The usual MFU convention (backward = 2 x forward; BatchNorm, activations and the optimiser
    are not counted). The forward is traced with ``depthwise_impl='conv'`` so a depthwise layer
    counts its k*k*C multiply-adds per pixel, whatever implementation the timed step uses.
    XLA's own ``cost_analysis()`` count is reported beside it: it also counts elementwise work,
    and for grouped convolutions it is far higher (MobileNet-v2: ~5x).
    """
    from nm_hebb_jax.models import get_model, smoke_overrides

    tiny = smoke_overrides(model) if smoke else {}
    net = get_model(model, num_classes=num_classes, depthwise_impl="conv", **tiny)
    x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), np.float32)
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), np.zeros(x.shape, x.dtype)))
    jaxpr = jax.make_jaxpr(lambda v, x: net.apply(v, x, train=False))(variables, x)
    return 3.0 * _jaxpr_flops(jaxpr.jaxpr)


def measured_gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best FP32 GFLOP/s of an ``n x n`` XLA matrix product on this machine (median of repeats).

    The CPU reference for "% of peak": the datasheet bound needs the turbo clock, which
    /proc/cpuinfo does not give (this VM reports 2.6 GHz, yet its GEMM runs at ~440 GFLOP/s, above
    2 cores x 2.6 GHz x 64 FLOP/cycle = 332).
    """
    a = jax.numpy.ones((n, n), np.float32)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def prepare_phase(cfg, mesh, phase: int = 1, batch: dict | None = None):
    """The trainer's steps of one phase, ready to lower: ``(step_for, start, args)``.

    ``args = (state, ewc, global_batch)`` as the trainer passes them: a freshly initialised
    state, the EWC state (a real Fisher when the phase uses EWC, else zeros) and the first
    training batch of the config's data (or ``batch``, a host ``{'image', 'label'}`` dict).
    """
    run = build_run(cfg, mesh=mesh)
    trainer = Trainer(run, "/nonexistent-not-written")
    params, bs = trainer.init_variables()
    plan, tx, step_for, start, _ = trainer.phase_setup(phase)
    state = trainer.make_state(params, bs, start, tx, plan)
    if plan.uses_ewc:
        ewc = trainer.compute_ewc(state, refresh_index=0)
    else:
        ewc = jax.device_put(init_ewc_state(state.params["backbone"]), trainer.repl)
    if batch is None:
        batch = run.dataset.train_batch(0, batch_size=cfg.batch_size, balanced=plan.balanced)
    return step_for, start, (state, ewc, S.global_batch(batch, mesh))


def stepping(fn, args) -> Callable[[], tuple]:
    """A zero-argument call of the compiled train step ``fn`` that feeds its new state back in.

    The trainer's steps donate their input state, so a state can be stepped only once: the
    callable starts from its own copy of ``args[0]`` (variants built from the same
    :func:`prepare_phase` arguments stay independent) and keeps the latest state.
    """
    return Stepper([fn], args)


def time_turns(fns: dict, repeats: int, steps_per_turn: int) -> dict[str, list[float]]:
    """Round-robin turns of ``steps_per_turn`` consecutive calls of each zero-argument ``fns``
    entry (each returns what to block on). The first call of a turn pays for switching buffers
    (see torch_reference.py) and is not in the sample unless it is the only one."""
    times = {n: [] for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            turn = []
            for _ in range(steps_per_turn):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                turn.append(time.perf_counter() - t0)
            times[name].extend(turn[1:] if len(turn) > 1 else turn)
    return times


class Stepper:
    """:func:`stepping` through a cycle of compiled steps that share one state, as the trainer's
    step loop does: call ``i`` runs ``fns[i % len(fns)]`` on the state the previous call returned.
    :meth:`extra` runs another compiled step on that state without advancing the cycle."""

    def __init__(self, fns: list, args):
        self.fns = list(fns)
        self.box = [jax.tree.map(jnp.copy, args[0]), *args[1:]]
        self.position = 0

    def extra(self, fn) -> tuple:
        self.box[0], metrics = fn(*self.box)
        return self.box[0], metrics

    def __call__(self) -> tuple:
        fn = self.fns[self.position % len(self.fns)]
        self.position += 1
        return self.extra(fn)


def phase1_schedule(k: int, g_r_mode: str) -> list[str]:
    """The step variants the trainer runs at phase-local steps ``t = 0 .. k - 1``
    (``nm_hebb_jax.train.hypergradient.hyper_variant``): one full hypergradient cycle."""
    names = {False: "p1_plain", True: "p1_hyper", "store": "p1_store", "apply": "p1_apply"}
    return [names[hyper_variant(t, k, g_r_mode)] for t in range(k)]


def time_windows(calls: dict, repeats: int, k: int, entries: dict | None = None) -> dict:
    """Round-robin windows of each zero-argument ``calls`` entry: an uncounted entry step
    (``entries[name]``, default ``calls[name]``; it pays for switching from the previous
    variant's buffers), then ``k`` consecutive calls, each timed: per variant, one list of
    ``k`` step times per window (their sum is the window's time).

    With a :class:`Stepper` over :func:`phase1_schedule` and ``k = hyper_every``, each window is
    one full hypergradient cycle in the trainer's order, the switches between its compiled
    variants included; the entry is a plain step, which leaves the hypergradient buffer as is.
    """
    entries = entries or {}
    steps = {n: [] for n in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            jax.block_until_ready(entries.get(name, fn)())
            window = []
            for _ in range(k):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                window.append(time.perf_counter() - t0)
            steps[name].append(window)
    return steps


def window_sums(steps: dict) -> dict[str, list[float]]:
    """:func:`time_windows`' step times summed per window."""
    return {n: [float(sum(w)) for w in windows] for n, windows in steps.items()}


def paired_ratios(sums: dict, base: str) -> dict[str, dict]:
    """Each variant's window sum over the ``base`` window of the same round (which opened that
    round a minute or so earlier, so slow drifts of the machine cancel): median, min and max
    over rounds, and the ratio of every round."""
    out = {}
    for name, values in sums.items():
        if name == base:
            continue
        r = [v / b for v, b in zip(values, sums[base], strict=True)]
        out[name] = {"median": float(np.median(r)), "min": min(r), "max": max(r), "rounds": r}
    return out


def build_variants(model: str, batch: int, dtype: str, smoke: bool = False):
    """Compiled step functions and their inputs for one backbone."""
    variants = {}
    mesh = S.make_mesh()
    for method, phase, g_r_mode in (
        ("baseline", 1, "recompute"),
        ("nm_hebb", 1, "recompute"),
        ("nm_hebb", 1, "reuse"),
        ("nm_hebb", 2, "recompute"),
    ):
        cfg = make_config(model, method, batch, dtype, g_r_mode, smoke=smoke)
        step_for, start, args = prepare_phase(cfg, mesh, phase)
        if method == "baseline":
            names = {"ce": step_for(start)}
        elif phase == 1 and g_r_mode == "recompute":
            names = {"p1_plain": step_for(start + 1), "p1_hyper": step_for(start)}
        elif phase == 1:  # t % k == k - 1 stores g_R, t % k == 0 applies the stored one
            names = {"p1_store": step_for(start + HYPER_EVERY - 1), "p1_apply": step_for(start)}
        else:
            names = {"p2": step_for(start)}
        for name, fn in names.items():
            t0 = time.perf_counter()
            compiled = fn.lower(*args).compile()
            compile_s = time.perf_counter() - t0
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            flops = float(cost.get("flops", 0.0)) if cost else 0.0
            variants[name] = {
                "fn": compiled,
                "args": args,
                "compile_s": compile_s,
                "flops": flops,
            }
    return variants


def bench_model(model, batch, dtype, repeats, warmup, steps_per_turn, windows=0, smoke=False):
    """Builds the variants, warms them up and times them in turns (:func:`time_turns`), then
    (``windows`` > 0) in schedule windows (:func:`time_windows`, :func:`window_calls`).

    Returns ``(variants, turn times, window step times or None)``."""
    variants = build_variants(model, batch, dtype, smoke)
    calls = {n: stepping(v["fn"], v["args"]) for n, v in variants.items()}
    for call in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(call())
    times = time_turns(calls, repeats, steps_per_turn)
    windows_steps = None
    if windows:
        calls, entries = window_calls(variants, HYPER_EVERY)
        windows_steps = time_windows(calls, windows, HYPER_EVERY, entries)
    return variants, times, windows_steps


def window_calls(variants: dict, k: int) -> tuple[dict, dict]:
    """The steppers :func:`time_windows` times: ``ce`` (k CE steps), ``p1`` (one phase-1
    hypergradient cycle, :func:`phase1_schedule` with ``'recompute'``) and ``p1_reuse`` (the same
    with ``'reuse'``), each from a fresh copy of its variant's start state; and their entry steps
    (a plain phase-1 step on the window's own state)."""
    plain = variants["p1_plain"]["fn"]
    calls = {"ce": Stepper([variants["ce"]["fn"]], variants["ce"]["args"])}
    for name, mode in WINDOW_MODES.items():
        schedule = phase1_schedule(k, mode)  # [0]: a variant built on this mode's state
        calls[name] = Stepper([variants[n]["fn"] for n in schedule], variants[schedule[0]]["args"])
    entries = {n: functools.partial(calls[n].extra, plain) for n in WINDOW_MODES}
    return calls, entries


def window_report(steps: dict, k: int) -> dict:
    """JSON of :func:`time_windows`' step times: each window's sum, the median step time at each
    position of the window (which variant ran there: ``schedules``), and the paired ratios of
    the sums to ``ce``."""
    sums = window_sums(steps)
    return {
        "k": k,
        "schedules": {n: phase1_schedule(k, m) for n, m in WINDOW_MODES.items()},
        "window_s": sums,
        "median_step_s": {n: float(np.median(v)) / k for n, v in sums.items()},
        "median_s_by_position": {
            n: [float(x) for x in np.median(np.asarray(w), axis=0)] for n, w in steps.items()
        },
        "step_s": steps,
        "ratios": paired_ratios(sums, "ce"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps-per-turn", type=int, default=3)
    p.add_argument("--peak-gflops", type=float, default=0.0)
    p.add_argument("--out", default="")
    p.add_argument(
        "--no-cpu-tuning", action="store_true", help="skip nm_hebb_jax.cpu_runtime.configure()"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the backbones' tiny variants: checks the script runs (the figures mean nothing)",
    )
    p.add_argument(
        "--no-malloc-tuning", action="store_true", help="configure() without tune_malloc()"
    )
    p.add_argument(
        "--windows",
        type=int,
        default=0,
        help="after the turns, also time this many rounds of schedule windows: ce, p1 and "
        "p1_reuse, each nm.hyper_every consecutive steps in the trainer's order, as ratios to "
        "the ce window of the same round",
    )
    args = p.parse_args()
    # before JAX starts
    tuning = [] if args.no_cpu_tuning else cpu_runtime.configure(malloc=not args.no_malloc_tuning)
    backend = jax.default_backend()
    if args.peak_gflops:
        peak, peak_how = args.peak_gflops, "given with --peak-gflops"
    elif backend == "cpu":
        peak = measured_gemm_gflops()
        peak_how = "measured: XLA FP32 2048x2048 matmul in this run (median of 5)"
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
        "cpu_tuning_flags": tuning,
        "malloc_tuning": cpu_runtime.malloc_applied(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "models": {},
    }
    for model in [m for m in args.models.split(",") if m]:
        variants, times, windows_steps = bench_model(
            model,
            args.batch,
            args.dtype,
            args.repeats,
            args.warmup,
            args.steps_per_turn,
            args.windows,
            args.smoke,
        )
        k = HYPER_EVERY
        med = {n: float(np.median(t)) for n, t in times.items()}
        med["p1_mean"] = (2 * med["p1_hyper"] + (k - 2) * med["p1_plain"]) / k
        med["p1_mean_reuse"] = (med["p1_store"] + med["p1_apply"] + (k - 2) * med["p1_plain"]) / k
        rows = {}
        model_flops = model_train_flops(model, args.batch, smoke=args.smoke)
        for name in (
            "ce",
            "p1_plain",
            "p1_hyper",
            "p1_mean",
            "p1_store",
            "p1_apply",
            "p1_mean_reuse",
            "p2",
        ):
            t = med[name]
            if name in variants:
                xla_flops = variants[name]["flops"]
            else:
                parts = ("p1_hyper", "p1_hyper") if name == "p1_mean" else ("p1_store", "p1_apply")
                xla_flops = (
                    sum(variants[q]["flops"] for q in parts)
                    + (k - 2) * variants["p1_plain"]["flops"]
                ) / k
            flops = model_flops
            rows[name] = {
                "median_s": t,
                "min_s": float(min(times[name])) if name in times else None,
                "max_s": float(max(times[name])) if name in times else None,
                "images_per_s": args.batch / t,
                "compile_s": variants[name]["compile_s"] if name in variants else None,
                "gflop_per_step": flops / 1e9,
                "xla_gflop_per_step": xla_flops / 1e9,
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
            "p1_mean_reuse_over_ce": med["p1_mean_reuse"] / med["ce"],
            "p1_plain_over_ce": med["p1_plain"] / med["ce"],
            "p2_over_ce": med["p2"] / med["ce"],
            **({"windows": window_report(windows_steps, HYPER_EVERY)} if windows_steps else {}),
            "peak_memory_bytes": mem,
            "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        print(f"\n{model}  batch {args.batch}  {args.dtype}  {backend}  ({args.repeats} repeats)")
        print(
            f"{'step':16s} {'median s':>9s} {'min':>7s} {'max':>7s} {'img/s':>8s} "
            f"{'compile s':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'%peak':>6s}"
        )
        for name, r in rows.items():
            mn = f"{r['min_s']:.3f}" if r["min_s"] is not None else "-"
            mx = f"{r['max_s']:.3f}" if r["max_s"] is not None else "-"
            cs = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
            print(
                f"{name:16s} {r['median_s']:9.3f} {mn:>7s} {mx:>7s} {r['images_per_s']:8.1f} "
                f"{cs:>9s} {r['gflop_per_step']:8.1f} {r['achieved_gflops']:8.1f} "
                f"{100 * r['fraction_of_peak']:6.1f}"
            )
        m = report["models"][model]
        print(
            f"ratios (same run): p1_mean/ce {m['p1_mean_over_ce']:.3f}  "
            f"p1_mean_reuse/ce {m['p1_mean_reuse_over_ce']:.3f}  "
            f"p1_plain/ce {m['p1_plain_over_ce']:.3f}  "
            f"p1_hyper/ce {m['p1_hyper_over_ce']:.3f}  p2/ce {m['p2_over_ce']:.3f}"
        )
        if windows_steps:
            w = m["windows"]
            print(
                f"schedule windows ({args.windows} rounds of {w['k']} steps; ratio to the same "
                "round's ce window, median (min-max)): "
                + "  ".join(
                    f"{n}/ce {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})"
                    for n, r in w["ratios"].items()
                )
            )
            for n, name in WINDOW_MODES.items():
                print(
                    f"  {n} ({name}) median s by position: "
                    + "  ".join(
                        f"{v.removeprefix('p1_')} {t:.3f}"
                        for v, t in zip(
                            w["schedules"][n], w["median_s_by_position"][n], strict=True
                        )
                    )
                )
            print(
                "  ce median s by position: "
                + "  ".join(f"{t:.3f}" for t in w["median_s_by_position"]["ce"])
            )
    print(f"\npeak: {peak:.0f} GFLOP/s ({peak_how})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
