r"""The reproduction study: NM-Hebb against the CE baseline and other methods, resumable.

  python -m experiments.reproduce run --grid=configs/reproduce_cpu.py [--dry-run]
      [--only method=baseline|nm_hebb --only seed=0] [--data-root=../shared/data]
  python -m experiments.reproduce report --grid=configs/reproduce_cpu.py [--pictures]

``run`` goes through the grid (seeds outermost, so a stopped grid is balanced over methods). For
each run without a summary it trains (``main.py`` with the grid's config file and overrides; a
killed run resumes from its workdir), then evaluates the final checkpoint twice with
``python -m nm_hebb_jax.evaluate``: on the validation split (what choices are tuned on) and on a
held-out ``test`` file cut from training images the run neither trained nor tuned on (written
once per budget under ``--holdout-root``: the evaluation path that scores checkpoints on another
npz file, unchanged). It then writes ``experiments/reproduce/results/<grid>/<run>.json``: both
evaluations, the training curves (every logged step: loss, each term raw and weighted, ν,
hypergradient, learning rate; validation Top-1), the budget, the overrides and the wall times.
That summary is what gets committed; checkpoints and data stay in ``--workroot`` and
``--holdout-root``. ``--dry-run`` lists every run with its state and estimated time.

``report`` builds ``RESULTS.md`` tables and ``experiments/reproduce/figures/`` from the committed
summaries alone (``--pictures`` also draws t-SNE panels and filter grids from the checkpoints in
``--workroot`` when they are present).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from experiments.reproduce.grid import RESULTS, ROOT, expand, load_grid, read_json, select

DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data")
DEFAULT_WORKROOT = os.path.join(ROOT, "runs", "reproduce")
DEFAULT_HOLDOUT = os.path.join(ROOT, ".data", "holdout")


def _fmt_time(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{m // 60}h{m % 60:02d}" if m >= 60 else f"{m} min"


def _measured(runs, results: str) -> dict:
    """Mean wall time of finished runs per (grid, group tag, dataset, model, method family)."""
    out: dict = {}
    for r in runs:
        s = read_json(r.summary_path(results))
        if s and s.get("seconds"):
            key = (r.dataset, r.model, r.method == "baseline", json.dumps(r.group["budget"]))
            out.setdefault(key, []).append(s["seconds"]["total"])
    return {k: {"seconds": sum(v) / len(v)} for k, v in out.items()}


def _estimate(r, measured: dict) -> float:
    key = (r.dataset, r.model, r.method == "baseline", json.dumps(r.group["budget"]))
    return r.estimate_seconds(measured.get(key))


# ---------------------------------------------------------------------------- holdout files


def make_holdout(run, data_root: str, holdout_root: str) -> str:
    """Writes (once) the held-out test file of ``run``'s dataset and budget; returns its path.

    Its images are a stratified, seeded sample of the training file's images that are neither in
    the run's training subset nor in its validation split, stored as pixels under the split name
    ``test`` (the project's npz format), with the class names.
    """
    path = run.holdout_path(holdout_root)
    if os.path.exists(path):
        return path
    import numpy as np

    from nm_hebb_jax.data import build_dataset, load_npz_split
    from nm_hebb_jax.data.dataset import stratified_split

    overrides = run.config_overrides(data_root)
    data_cfg = {
        "source": "npz",
        "name": "holdout",
        "path": overrides["data.path"],
        "val_size": overrides["data.val_size"],
        "val_seed": overrides["data.val_seed"],
        "train_subset": overrides["data.train_subset"],
        "augment": False,
        "norm_stats": "computed",
        "eval_split": "val",
    }
    ds = build_dataset(data_cfg, seed=0)
    images, labels = load_npz_split(overrides["data.path"], "train")
    used = np.union1d(ds.source_rows("train"), ds.source_rows("val"))
    rest = np.setdiff1d(np.arange(labels.shape[0]), used)
    n = int(run.group["budget"]["test_size"])
    if n > rest.size:
        raise SystemExit(
            f"error: test_size={n} but only {rest.size} images of {run.dataset} are left after the "
            "training subset and the validation split; lower test_size or train_subset"
        )
    _, take = (
        stratified_split(labels[rest], n, seed=12345) if n < rest.size else (None, slice(None))
    )
    rows = rest[take]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(
        tmp,
        x_test=images[rows],
        y_test=labels[rows].astype(np.int64),
        class_names=np.asarray(ds.class_names),
        source_rows=rows.astype(np.int64),
    )
    os.replace(tmp, path)
    print(f"wrote the held-out test file {path} ({n} images)", flush=True)
    return path


# ----------------------------------------------------------------------------------------- run


def _curves(workdir: str) -> dict:
    """Every logged scalar of a run by step (the last record of a step wins: a resumed run
    replays the steps after its checkpoint), as ``{'step': [...], key: [...]}`` lists."""
    by_step: dict[int, dict] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            by_step.setdefault(rec["step"], {}).update(rec)
    train = [(s, r) for s, r in sorted(by_step.items()) if "train/loss" in r]
    val = [(s, r) for s, r in sorted(by_step.items()) if "val/top1" in r]
    keys = sorted({k for _, r in train for k in r if k.startswith("train/")})
    out = {"step": [s for s, _ in train]}
    for k in keys:
        out[k] = [r.get(k) for _, r in train]
    out["val_step"] = [s for s, _ in val]
    out["val/top1"] = [r["val/top1"] for _, r in val]
    return out


def _evaluate(workdir: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "nm_hebb_jax.evaluate", f"--workdir={workdir}", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"error: evaluation of {workdir} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_one(r, args) -> dict:
    workdir = r.workdir(args.workroot)
    if r.test_split:  # the dataset's own test split (full-data grids)
        holdout, test_args = None, [f"--split={r.test_split}", "--noplots"]
    else:
        holdout = make_holdout(r, args.data_root, args.holdout_root)
        test_args = [f"--data={holdout}", "--split=test", "--noplots"]
    t0 = time.time()
    proc = subprocess.run(
        r.train_command(args.workroot, args.data_root), cwd=ROOT, capture_output=True, text=True
    )
    train_s = time.time() - t0
    # main.py exits 3 when the loss or gradient turns non-finite: a result (this setting
    # diverges), recorded as such, not an error of the grid.
    diverged = proc.returncode == 3
    if proc.returncode not in (0, 3) and "already holds a finished run" not in proc.stderr:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"error: training {r.name} failed (exit {proc.returncode})")
    steps = (
        json.loads(proc.stdout.strip().splitlines()[-1])["steps"] if proc.returncode == 0 else None
    )
    t1 = time.time()
    if diverged:
        val = test = None
    else:
        val = _evaluate(workdir, [])
        test = _evaluate(workdir, test_args)
        for ev in (val, test):
            ev.pop("provenance", None)
    eval_s = time.time() - t1
    import importlib.metadata as md

    return {
        "run": r.name,
        "grid": r.grid,
        "dataset": r.dataset,
        "model": r.model,
        "method": r.method,
        "seed": r.seed,
        "tag": r.group.get("tag", ""),
        "budget": r.group["budget"],
        "overrides": {
            k: v
            for k, v in r.config_overrides("DATA").items()
            if k not in ("data.path", "data.data_dir")
        },
        "test": os.path.basename(holdout) if holdout else f"split {r.test_split}",
        "phase1_steps": steps[0] if steps else None,
        "status": "diverged" if diverged else "finished",
        "error": proc.stderr.strip().splitlines()[-1] if diverged else None,
        "eval": {"val": val, "test": test},
        "curves": _curves(workdir),
        "seconds": {
            "train": None if proc.returncode not in (0, 3) else round(train_s, 1),
            "eval": round(eval_s, 1),
            "total": round(train_s + eval_s, 1),
        },
        "versions": {p: md.version(p) for p in ("jax", "flax", "optax")},
        "machine": f"{os.cpu_count()} CPU cores",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def cmd_run(args) -> None:
    grid, groups = load_grid(args.grid)
    runs = select(expand(grid, groups), args.only)
    measured = _measured(runs, args.results)
    if args.dry_run:
        total = 0.0
        for r in runs:
            done = os.path.exists(r.summary_path(args.results))
            est = 0.0 if done else _estimate(r, measured)
            total += est
            state = "done" if done else _fmt_time(est)
            print(f"{r.name:<55} {state:>8}   {' '.join(r.train_command('RUNS', 'DATA')[2:5])}")
        print(
            f"{len(runs)} runs, {sum(os.path.exists(r.summary_path(args.results)) for r in runs)}"
            f" done; estimated time left on this machine: {_fmt_time(total)}"
        )
        return
    if not os.path.isdir(args.data_root):
        raise SystemExit(f"error: --data-root {args.data_root} does not exist")
    failed = []
    for r in runs:
        out = r.summary_path(args.results)
        if os.path.exists(out):
            continue
        print(f"running {r.name} (estimated {_fmt_time(_estimate(r, measured))})", flush=True)
        try:
            summary = run_one(r, args)
        except SystemExit as e:  # one failed run (its error printed) does not stop the grid
            print(e, file=sys.stderr, flush=True)
            failed.append(r.name)
            continue
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out + ".tmp", "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True, default=str)
            f.write("\n")
        os.replace(out + ".tmp", out)
        if summary["status"] == "diverged":
            print(f"  diverged: {summary['error']}", flush=True)
            continue
        v, t = summary["eval"]["val"], summary["eval"]["test"]
        print(
            f"  val top1 {v['top1']:.4f}  test top1 {t['top1']:.4f} nmi {t['nmi']:.4f}  "
            f"({_fmt_time(summary['seconds']['total'])})",
            flush=True,
        )
    if failed:
        raise SystemExit(
            f"error: {len(failed)} run(s) failed (their errors are above; rerun the same command "
            f"to retry them, finished runs are skipped): {', '.join(failed)}"
        )


def cmd_report(args) -> None:
    from experiments.reproduce.report import write_report

    write_report(args)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m experiments.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("run", cmd_run), ("report", cmd_report)):
        q = sub.add_parser(name)
        q.add_argument("--grid", default="configs/reproduce_cpu.py")
        q.add_argument("--results", default=RESULTS)
        q.add_argument("--workroot", default=DEFAULT_WORKROOT)
        q.set_defaults(fn=fn)
        if name == "run":
            q.add_argument("--dry-run", action="store_true")
            q.add_argument("--only", action="append", default=[])
            q.add_argument("--data-root", default=DEFAULT_DATA)
            q.add_argument("--holdout-root", default=DEFAULT_HOLDOUT)
        else:
            q.add_argument("--pictures", action="store_true")
            q.add_argument("--out", default=os.path.join(ROOT, "RESULTS.md"))
            q.add_argument(
                "--figures", default=os.path.join(ROOT, "experiments", "reproduce", "figures")
            )
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
