r"""Training parity: our trainer's ``baseline`` against the same recipe in PyTorch, over seeds.

  python -m experiments.parity run --model vgg11 --seeds 0,1,2,3,4 [--sides jax,torch]
      [--data ../shared/data/cifar10_train.npz] [--set optim.warmup_epochs=2 ...]
  python -m experiments.parity report [--write]

``run`` trains every (seed, side) pair that has no result file yet, one at a time, seeds
interleaved across sides (so a stopped batch of runs leaves a balanced set), each in its own
process: the JAX side is ``main.py --config=configs/parity.py:<model>``, the PyTorch side
``experiments/parity/torch_side.py`` with the same config. Both are resumable: rerunning the same
command continues a killed run from its last checkpoint (in ``runs/parity/``, never committed)
and skips finished ones. Each finished run writes a small summary,
``experiments/parity/results/<variant>/<model>_<side>_s<seed>.json`` (per-epoch validation Top-1
and loss, mean training loss, wall time), which is what gets committed.

``report`` reads every summary and prints, per model and variant, the per-seed final validation
Top-1 of both sides, mean ± std, Welch's t-test and the 95% interval of the difference of means,
and the per-epoch means; ``--write`` puts the same tables into ``experiments/parity/README.md``
between its ``<!-- results -->`` markers.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

from experiments.parity.common import (
    RESULTS,
    ROOT,
    load_config,
    result_path,
    variant_name,
    write_json,
)

README = os.path.join(ROOT, "experiments", "parity", "README.md")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10_train.npz")


# ---------------------------------------------------------------------------------------- run


def _jax_history(workdir: str, steps_per_epoch: int) -> list[dict]:
    """Per-epoch records from a JAX run's ``metrics.jsonl`` (the last record of each step wins:
    a resumed run replays the steps after its checkpoint)."""
    by_step: dict[int, dict] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            by_step.setdefault(rec["step"], {}).update(rec)
    out = []
    for step in sorted(by_step):
        rec = by_step[step]
        if "val/top1" in rec and step % steps_per_epoch == 0:
            out.append(
                {
                    "epoch": step // steps_per_epoch,
                    "step": step,
                    "train_loss": rec.get("train/loss"),
                    "val_top1": rec["val/top1"],
                    "val_loss": rec["val/loss"],
                }
            )
    return out


def run_jax(model, seed, overrides, data, workdir, out) -> None:
    config = load_config(model, overrides)
    spe = config.data.train_subset // config.batch_size
    cmd = [
        sys.executable,
        os.path.join(ROOT, "main.py"),
        f"--config={os.path.join(ROOT, 'configs', 'parity.py')}:{model}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        f"--config.data.path={data}",
        *(f"--config.{item}" for item in overrides),
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    finished_before = "already holds a finished run" in proc.stderr
    if proc.returncode != 0 and not finished_before:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"error: the JAX run {workdir} failed (exit {proc.returncode})")
    history = _jax_history(workdir, spe)
    epochs = int(config.phase1.epochs)
    if len(history) < epochs:
        raise SystemExit(f"error: {workdir} logged {len(history)} of {epochs} epochs")
    history = history[:epochs]
    import importlib.metadata as md

    write_json(
        out,
        {
            "side": "jax",
            "model": model,
            "seed": seed,
            "overrides": list(overrides),
            "epochs": history,
            "final_val_top1": history[-1]["val_top1"],
            "steps": spe * epochs,
            "train_size": config.data.train_subset,
            "val_size": config.data.val_size,
            # main.py's whole wall time (start-up, compilation, evaluation included)
            "train_seconds": None if finished_before else round(wall, 1),
            "versions": {p: md.version(p) for p in ("jax", "flax", "optax")},
        },
    )


def run_torch(model, seed, overrides, data, workdir, out) -> None:
    cmd = [
        sys.executable,
        "-m",
        "experiments.parity.torch_side",
        f"--model={model}",
        f"--seed={seed}",
        f"--workdir={workdir}",
        f"--out={out}",
        f"--data={data}",
        *(f"--set={item}" for item in overrides),
    ]
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"error: the PyTorch run {workdir} failed (exit {proc.returncode})")


def cmd_run(args) -> None:
    data = os.path.abspath(args.data)
    if not os.path.exists(data):
        raise SystemExit(f"error: data file {data} does not exist; pass --data=FILE.npz")
    variant = variant_name(args.overrides)
    seeds = [int(s) for s in args.seeds.split(",")]
    sides = args.sides.split(",")
    for side in sides:
        if side not in ("jax", "torch"):
            raise SystemExit(f"error: unknown side {side!r}; use jax, torch or jax,torch")
    load_config(args.model, args.overrides)  # a bad override fails here, before any run
    for seed in seeds:
        for side in sides:
            out = result_path(args.model, side, seed, variant, args.results)
            if os.path.exists(out):
                print(f"done already: {os.path.relpath(out, ROOT)}")
                continue
            workdir = os.path.join(args.workroot, variant, f"{args.model}_{side}_s{seed}")
            print(f"running {side} {args.model} seed {seed} ({variant}) in {workdir}", flush=True)
            t0 = time.time()
            (run_jax if side == "jax" else run_torch)(
                args.model, seed, args.overrides, data, workdir, out
            )
            top1 = json.load(open(out))["final_val_top1"]
            print(f"  val top1 {top1:.4f} after {time.time() - t0:.0f} s", flush=True)


# ------------------------------------------------------------------------------------- report


def load_results(results: str = RESULTS) -> dict:
    """``{(variant, model): {side: [record, ...] sorted by seed}}``."""
    table: dict = {}
    for path in sorted(glob.glob(os.path.join(results, "*", "*.json"))):
        rec = json.load(open(path))
        key = (os.path.basename(os.path.dirname(path)), rec["model"])
        table.setdefault(key, {}).setdefault(rec["side"], []).append(rec)
    for sides in table.values():
        for recs in sides.values():
            recs.sort(key=lambda r: r["seed"])
    return table


def compare(a: list[float], b: list[float]) -> dict:
    """Welch's t-test of two samples and the 95% interval of mean(a) − mean(b)."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"diff": float(a.mean() - b.mean())}
    if a.size < 2 or b.size < 2:
        return {**out, "p": float("nan"), "ci": (float("nan"), float("nan"))}
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = float(np.sqrt(va + vb))
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se > 0 else 1.0
    t = stats.t.ppf(0.975, dof)
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue) if se > 0 else 1.0
    return {**out, "p": p, "ci": (out["diff"] - t * se, out["diff"] + t * se), "dof": dof}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report_markdown(table: dict) -> str:
    lines = []
    for (variant, model), sides in sorted(table.items()):
        jax_recs, torch_recs = sides.get("jax", []), sides.get("torch", [])
        lines.append(f"### {model}, variant `{variant}`")
        lines.append("")
        if not torch_recs and variant != "default":
            # A JAX-only variant (e.g. an initialisation PyTorch already uses): against the
            # default PyTorch runs.
            torch_recs = table.get(("default", model), {}).get("torch", [])
            lines.append(
                "PyTorch column: the `default` variant's runs (this variant changes only "
                "the JAX side)."
            )
            lines.append("")
        seeds = sorted({r["seed"] for r in jax_recs + torch_recs})
        by = {(r["side"], r["seed"]): r for r in jax_recs + torch_recs}
        lines.append("| seed | JAX (ours) Top-1 % | PyTorch Top-1 % | JAX wall s | PyTorch s |")
        lines.append("|---|---|---|---|---|")
        for s in seeds:
            j, t = by.get(("jax", s)), by.get(("torch", s))
            lines.append(
                f"| {s} | {_pct(j['final_val_top1']) if j else '–'} | "
                f"{_pct(t['final_val_top1']) if t else '–'} | "
                f"{j['train_seconds'] if j and j['train_seconds'] else '–'} | "
                f"{t['train_seconds'] if t else '–'} |"
            )
        fj = [r["final_val_top1"] for r in jax_recs]
        ft = [r["final_val_top1"] for r in torch_recs]

        def ms(v):
            return f"{_pct(np.mean(v))} ± {_pct(np.std(v, ddof=1))}" if len(v) > 1 else "–"

        lines.append(f"| **mean ± std** | **{ms(fj)}** | **{ms(ft)}** | | |")
        lines.append("")
        if len(fj) > 1 and len(ft) > 1:
            c = compare(fj, ft)
            verdict = "compatible" if c["ci"][0] <= 0 <= c["ci"][1] else "NOT compatible"
            lines.append(
                f"JAX − PyTorch = {100 * c['diff']:+.2f} pp, 95% CI [{100 * c['ci'][0]:+.2f}, "
                f"{100 * c['ci'][1]:+.2f}] pp (Welch, {len(fj)} vs {len(ft)} seeds), p = "
                f"{c['p']:.3f}: **{verdict}** at this budget."
            )
            lines.append("")
        n_ep = min(len(r["epochs"]) for r in jax_recs + torch_recs)
        lines.append("| epoch | JAX val Top-1 % | PyTorch val Top-1 % | JAX train loss | PyTorch |")
        lines.append("|---|---|---|---|---|")
        for e in range(n_ep):

            def mean_of(recs, key, e=e):
                vals = [r["epochs"][e][key] for r in recs if r["epochs"][e][key] is not None]
                return np.mean(vals) if vals else float("nan")

            lines.append(
                f"| {e + 1} | {_pct(mean_of(jax_recs, 'val_top1'))} | "
                f"{_pct(mean_of(torch_recs, 'val_top1'))} | "
                f"{mean_of(jax_recs, 'train_loss'):.3f} | {mean_of(torch_recs, 'train_loss'):.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def cmd_report(args) -> None:
    table = load_results(args.results)
    if not table:
        raise SystemExit(f"error: no results under {args.results}; run the 'run' command first")
    text = report_markdown(table)
    print(text)
    if args.write:
        readme = open(README).read()
        begin, end = "<!-- results -->", "<!-- /results -->"
        if begin not in readme or end not in readme:
            raise SystemExit(f"error: {README} lacks the {begin} ... {end} markers")
        head, rest = readme.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(README, "w") as f:
            f.write(f"{head}{begin}\n{text}\n{end}{tail}")
        print(f"wrote {os.path.relpath(README, ROOT)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.parity", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the missing (seed, side) runs")
    r.add_argument("--model", default="vgg11")
    r.add_argument("--seeds", default="0,1,2,3,4")
    r.add_argument("--sides", default="jax,torch")
    r.add_argument("--data", default=DEFAULT_DATA)
    r.add_argument("--set", action="append", default=[], dest="overrides")
    r.add_argument("--results", default=RESULTS)
    r.add_argument("--workroot", default=os.path.join(ROOT, "runs", "parity"))
    r.set_defaults(fn=cmd_run)
    q = sub.add_parser("report", help="tables and verdicts from the committed summaries")
    q.add_argument("--results", default=RESULTS)
    q.add_argument("--write", action="store_true", help="update experiments/parity/README.md")
    q.set_defaults(fn=cmd_report)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
