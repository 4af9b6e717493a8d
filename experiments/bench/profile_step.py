r"""Where a training step's time goes on XLA:CPU: a profiler trace summed per compiled operation.

  python experiments/bench/profile_step.py --model mobilenet_v2
  python experiments/bench/profile_step.py --model mobilenet_v2 \
      --override model.overrides.conv_input_barrier=off --out /tmp/mb_off.json

Builds the CE step (``--method baseline``; ``nm_hebb`` profiles the plain phase-1 step) of a
full-size backbone on the bundled digits data as ``step_bench.py`` does (same configuration, CPU
runtime configured first), runs ``--warmup`` steps, then traces ``--steps`` steps with
``jax.profiler`` and reads the trace back with ``jax.profiler.ProfileData``. It prints, per step:

  - the wall time, and the busy time summed over XLA's threads (``busy_ms``: time inside
    thread-pool task regions or named operations; the client thread runs some operations
    inline);
  - the part of it in named operations (``named_ms``) and the rest (``unnamed_ms``): XLA's own
    (Eigen) convolutions run as thread-pool tasks that the trace does not name, so on these
    backbones ``unnamed_ms`` is mostly convolution work;
  - the named time per kind of operation (the HLO name without its number: ``ynn_fusion``,
    ``slice_select_fusion``, ``convolution``, ...), and for each kind how much of it is
    reductions (fusions whose HLO computation contains a ``reduce``) and how much of that runs
    inside loops (operations called more than once a step: e.g. the ``lax.scan`` of
    ``depthwise_kernel_grad``);
  - the ``--top`` single operations, with their calls per step.

Names are those of the compiled HLO (``--hlo PATH`` writes it, to look an operation up).
Profiling adds overhead; compare runs of this script with each other, not with step_bench.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: Trace events that are scheduling, not work.
_NOT_WORK = ("ThunkExecutor", "Slinky", "ThreadpoolListener")


def _kind(name: str) -> str:
    return re.sub(r"\.\d+$", "", name)


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for start, stop in sorted(spans):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def _self_times(events: list[tuple[float, float, str]]) -> list[tuple[str, float]]:
    """Exclusive time of nested events (a ``while`` contains its body's operations), sorted by
    start with the enclosing event first."""
    out, stack = [], []  # stack entries: [end, name, child_ns, duration]
    for start, end, name in events:
        while stack and start >= stack[-1][0]:
            done = stack.pop()
            out.append((done[1], done[3] - done[2]))
        if stack:
            stack[-1][2] += min(end, stack[-1][0]) - start
        stack.append([end, name, 0.0, end - start])
    out.extend((e[1], e[3] - e[2]) for e in stack)
    return out


def summarize(trace_file: str, hlo_text: str, steps: int, top: int) -> dict:
    """Busy time per operation kind on XLA's worker threads, per step, from one trace file."""
    from jax.profiler import ProfileData

    bodies = dict(re.findall(r"^(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S))
    callee = dict(re.findall(r"^\s*%([\w.\-]+) = [^\n]*calls=(%[\w.\-]+)", hlo_text, re.M))
    per_op = collections.Counter()
    calls = collections.Counter()
    threads = set()
    busy_ns = 0.0
    for plane in ProfileData.from_file(trace_file).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA's worker threads and its client
                continue  # thread, which also runs operations inline
            region_start = None
            regions, named = [], []  # thread-pool task regions; named operations
            for ev in sorted(line.events, key=lambda e: (e.start_ns, -e.duration_ns)):
                if not line.name.startswith("tf_XLAEigen"):
                    pass  # the client thread's regions span whole executions: not work
                elif ev.name == "ThreadpoolListener::StartRegion":
                    region_start = ev.start_ns
                elif ev.name == "ThreadpoolListener::StopRegion" and region_start is not None:
                    regions.append((region_start, ev.start_ns))
                    region_start = None
                if ev.name.startswith(_NOT_WORK):
                    continue
                threads.add(line.name)
                named.append((ev.start_ns, ev.start_ns + ev.duration_ns, ev.name))
                if not ev.name.startswith("end: "):
                    calls[ev.name] += 1
            for name, self_ns in _self_times(named):
                per_op[name.removeprefix("end: ")] += self_ns / 1e6 / steps
            busy_ns += _union_length(regions + [(start, end) for start, end, _ in named])
    kinds = collections.Counter()
    reductions = collections.Counter()
    looped = collections.Counter()
    for name, ms in per_op.items():
        kinds[_kind(name)] += ms
        if " reduce(" in bodies.get(callee.get(name, ""), ""):
            reductions[_kind(name)] += ms
            if calls[name] > steps:  # inside a loop (e.g. a lax.scan body)
                looped[_kind(name)] += ms
    total = sum(kinds.values())
    busy = busy_ns / 1e6 / steps
    return {
        "threads": len(threads),
        "busy_ms": busy,
        "named_ms": total,
        "unnamed_ms": max(busy - total, 0.0),
        "kinds": [
            {
                "kind": k,
                "ms": ms,
                "share_of_busy": ms / busy if busy else 0.0,
                "reduction_ms": reductions[k],
                "reduction_in_loops_ms": looped[k],
            }
            for k, ms in kinds.most_common()
        ],
        "top_ops": [
            {"op": n, "ms": ms, "calls": calls[n] / steps} for n, ms in per_op.most_common(top)
        ],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--method", default="baseline", choices=("baseline", "nm_hebb"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--override", action="append", default=[], help="config KEY=VALUE (repeatable)")
    p.add_argument("--hlo", default="", help="also write the compiled HLO text here")
    p.add_argument("--out", default="")
    args = p.parse_args()

    from step_bench import make_config, prepare_phase, stepping
    from torch_reference import set_dotted

    from nm_hebb_jax import cpu_runtime

    cfg = make_config(args.model, args.method, args.batch, args.dtype)
    for item in args.override:
        set_dotted(cfg, item)
    if cfg.cpu_tuning:  # before the first JAX computation, as main.py does
        cpu_runtime.configure(malloc=cfg.cpu_malloc_tuning)
    import jax

    from nm_hebb_jax.train import sharding as S

    step_for, start, step_args = prepare_phase(cfg, S.make_mesh(), 1)
    compiled = step_for(start + 1).lower(*step_args).compile()
    hlo_text = compiled.as_text()
    if args.hlo:
        with open(args.hlo, "w") as f:
            f.write(hlo_text)
    call = stepping(compiled, step_args)
    for _ in range(args.warmup):
        jax.block_until_ready(call())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                jax.block_until_ready(call())
            wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
        (trace_file,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        report = summarize(trace_file, hlo_text, args.steps, args.top)
    report = {
        "model": args.model,
        "method": args.method,
        "batch": args.batch,
        "overrides": args.override,
        "backend": jax.default_backend(),
        "steps": args.steps,
        "wall_ms_per_step": wall_ms,
        **report,
    }
    print(
        f"{args.model} {args.method} batch {args.batch} {' '.join(args.override)}: "
        f"{wall_ms:.0f} ms/step (traced); {report['threads']} XLA threads busy "
        f"{report['busy_ms']:.0f} ms/step: {report['named_ms']:.0f} in named operations, "
        f"{report['unnamed_ms']:.0f} in unnamed pool tasks (convolutions)"
    )
    print(f"{'kind':34s} {'ms/step':>8s} {'of busy':>7s} {'reductions':>10s} {'in loops':>9s}")
    for k in report["kinds"][: args.top]:
        print(
            f"{k['kind']:34s} {k['ms']:8.1f} {100 * k['share_of_busy']:6.1f}% "
            f"{k['reduction_ms']:10.1f} {k['reduction_in_loops_ms']:9.1f}"
        )
    print("top operations:")
    for op in report["top_ops"]:
        print(f"  {op['op']:34s} {op['ms']:8.1f} ms/step  {op['calls']:5.0f} calls/step")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
