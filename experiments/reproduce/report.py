"""``python -m experiments.reproduce report``: RESULTS.md and figures from the run summaries.

Every number comes from ``experiments/reproduce/results/<grid>/*.json`` (written by ``run``);
nothing here trains or evaluates, except ``--pictures``, which draws t-SNE panels and filter
grids from the checkpoints when they are still in ``--workroot``.
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np

from experiments.reproduce.grid import ROOT, load_grid

FIGURES = os.path.join(ROOT, "experiments", "reproduce", "figures")

#: The paper's readable claims (abstract of arXiv 2508.19896), per dataset: Top-1 gain in pp.
PAPER_TOP1_GAIN = {
    "cifar10": (2.0, 10.0),
    "cifar100": (2.0, 9.0),
    "tinyimagenet": (4.3, 8.9),
}
PAPER_NMI_GAIN = 0.15

METRICS = (
    ("top1", "Top-1 %", 100.0),
    ("nmi", "NMI", 1.0),
    ("knn_top1", "kNN Top-1 %", 100.0),
    ("filters/filter_redundancy", "filter redundancy", 1.0),
    ("filters/class_selectivity_mean", "class selectivity", 1.0),
)
METHOD_ORDER = (
    "baseline",
    "nm_hebb",
    "phase1_only",
    "phase2_only",
    "no_gate",
    "hebb_only",
    "ewc_only",
    "label_smoothing",
    "center_loss",
    "supcon",
)


def load_summaries(results: str, grid: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(results, grid, "*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def t_interval(values) -> tuple[float, float, float]:
    """Mean and the 95% Student-t interval of the mean (NaN bounds for fewer than 2 values)."""
    from scipy import stats

    v = np.asarray(values, float)
    m = float(v.mean()) if v.size else float("nan")
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - half, m + half


def _ms(values, scale: float, digits: int) -> str:
    v = np.asarray(values, float) * scale
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def group_key(s: dict) -> tuple:
    return (s["dataset"], s["model"], json.dumps(s["budget"], sort_keys=True), s.get("tag", ""))


def paired_diffs(runs: dict, method: str, metric: str, split: str = "test") -> list[float]:
    """Per-seed ``method − baseline`` of ``metric`` over the seeds both have."""
    base = {s["seed"]: s for s in runs.get("baseline", [])}
    return [
        s["eval"][split][metric] - base[s["seed"]]["eval"][split][metric]
        for s in runs.get(method, [])
        if s["seed"] in base
    ]


def group_table(runs: dict, split: str = "test") -> list[str]:
    """Methods x metrics: mean ± std over seeds, and the paired Top-1 and NMI differences."""
    lines = [
        "| method | seeds | "
        + " | ".join(name for _, name, _ in METRICS)
        + " | Δ Top-1 vs baseline (pp) | Δ NMI | val Top-1 % |",
        "|---" * (len(METRICS) + 5) + "|",
    ]
    for method in METHOD_ORDER:
        if method not in runs:
            continue
        recs = runs[method]
        cells = [method, str(len(recs))]
        for key, _, scale in METRICS:
            digits = 1 if scale == 100.0 else 3
            cells.append(
                _ms([s["eval"][split].get(key, float("nan")) for s in recs], scale, digits)
            )
        if method == "baseline":
            cells += ["–", "–"]
        else:
            for key, scale, digits in (("top1", 100.0, 2), ("nmi", 1.0, 3)):
                d = paired_diffs(runs, method, key, split)
                cells.append(_ms(d, scale, digits) + (f" (n={len(d)})" if d else ""))
        cells.append(_ms([s["eval"]["val"]["top1"] for s in recs], 100.0, 1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict_top1(diffs: list[float], claim: tuple[float, float]) -> str:
    """Confirmed / not confirmed / inconclusive for a claimed gain of at least ``claim[0]`` pp."""
    if len(diffs) < 2:
        return "inconclusive (fewer than 2 paired seeds)"
    m, lo, hi = t_interval(np.asarray(diffs) * 100)
    low = claim[0]
    if lo >= low:
        return f"confirmed (Δ {m:+.2f} pp, 95% CI [{lo:+.2f}, {hi:+.2f}])"
    if hi < low:
        return (
            f"not confirmed: a gain of {low:g} pp or more is excluded (Δ {m:+.2f} pp, 95% CI "
            f"[{lo:+.2f}, {hi:+.2f}])"
        )
    return f"inconclusive at this budget (Δ {m:+.2f} pp, 95% CI [{lo:+.2f}, {hi:+.2f}])"


def term_table(runs: dict) -> list[str]:
    """Mean phase-1 magnitudes of the loss terms (raw and weighted) and of ν, per method."""
    keys = ("ce", "hebb", "hebb_weighted", "ewc", "ewc_weighted", "gate_prior_weighted")
    lines = [
        "| method | " + " | ".join(keys) + " | ν (mean, min–max) | hypergradient h > 0 |",
        "|---" * (len(keys) + 3) + "|",
    ]
    for method in METHOD_ORDER:
        recs = runs.get(method, [])
        if not recs:
            continue
        cells = [method]
        for k in keys:
            vals = []
            for s in recs:
                c = s["curves"]
                p1 = phase1_mask(s)
                vals += [
                    v
                    for v, m in zip(c.get(f"train/terms/{k}", []), p1, strict=False)
                    if m and v is not None
                ]
            cells.append(f"{np.mean(vals):.3g}" if vals else "–")
        gates = [
            v
            for s in recs
            for v, m in zip(s["curves"].get("train/gate", []), phase1_mask(s), strict=False)
            if m
        ]
        cells.append(f"{np.mean(gates):.3f} ({min(gates):.3f}–{max(gates):.3f})" if gates else "–")
        hs = [v for s in recs for v in s["curves"].get("train/hypergrad", []) if v]
        cells.append(f"{np.mean(np.asarray(hs) > 0):.0%} of {len(hs)} windows" if hs else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def phase1_mask(s: dict) -> list[bool]:
    """Which logged records of a run are in phase 1 (step ≤ its number of phase-1 steps)."""
    c = s["curves"]
    n1 = s.get("phase1_steps")
    if n1 is None:  # the phase-1 end is the first validation step of the last two
        n1 = c["val_step"][-2] if len(c.get("val_step", [])) >= 2 else max(c["step"])
    return [st <= n1 for st in c["step"]]


def _figure_bars(key, runs: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHOD_ORDER if m in runs]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(methods) + 3), 3.6))
    for ax, (metric, label, scale) in zip(axes, (METRICS[0], METRICS[1]), strict=True):
        for i, m in enumerate(methods):
            vals = np.asarray([s["eval"]["test"][metric] for s in runs[m]]) * scale
            ax.bar(i, vals.mean(), color="#4c72b0" if m != "nm_hebb" else "#dd8452", alpha=0.8)
            ax.scatter(np.full(vals.size, i), vals, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(label)
        lo = min(np.asarray([s["eval"]["test"][metric] for m in methods for s in runs[m]]) * scale)
        hi = max(np.asarray([s["eval"]["test"][metric] for m in methods for s in runs[m]]) * scale)
        ax.set_ylim(
            lo - 0.15 * (hi - lo + 1e-9) - (1 if scale == 100 else 0.01),
            hi + 0.1 * (hi - lo + 1e-9) + (0.5 if scale == 100 else 0.005),
        )
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _figure_gate(runs: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = runs.get("nm_hebb", [])
    if not recs:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for s in recs:
        c = s["curves"]
        p1 = phase1_mask(s)
        steps = [st for st, m in zip(c["step"], p1, strict=False) if m]

        def series(k, c=c, p1=p1):
            return [np.nan if v is None else v for v, m in zip(c.get(k, []), p1, strict=False) if m]

        axes[0].plot(steps, series("train/gate"), label=f"ν, seed {s['seed']}")
        axes[0].plot(
            steps, series("train/terms/ce"), "--", alpha=0.5, label=f"L_CE, seed {s['seed']}"
        )
        for ref in ("0.1", "0.5", "2.3"):
            vals = series(f"train/nm/gate_at_ce={ref}")
            if vals:
                axes[1].plot(steps, vals, label=f"ν(L_CE={ref}), seed {s['seed']}")
        h = series("train/hypergrad_scaled") or series("train/hypergrad")
        axes[2].plot(steps, h, ".", ms=3, label=f"seed {s['seed']}")
    axes[0].set_title("gate ν and CE over phase 1", fontsize=9)
    axes[1].set_title("learned gate at fixed losses", fontsize=9)
    axes[2].set_title("hypergradient (scaled, window means)", fontsize=9)
    axes[2].axhline(0, color="k", lw=0.5)
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _figure_terms(runs: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = runs.get("nm_hebb", [])
    if not recs:
        return
    s = recs[0]
    c = s["curves"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharex=True)
    for ax, suffix, label in ((axes[0], "", "raw"), (axes[1], "_weighted", "as in the loss")):
        for k in ("ce", "hebb", "ewc", "pair", "gate_prior"):
            vals = c.get(f"train/terms/{k}{suffix}")
            if vals and any(v for v in vals if v is not None):
                ax.plot(c["step"], [np.nan if v is None else max(v, 1e-12) for v in vals], label=k)
        ax.set_yscale("log")
        ax.set_title(f"loss terms, {label} (seed {s['seed']})", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(args) -> None:
    grid, groups = load_grid(args.grid)
    summaries = load_summaries(args.results, grid)
    if not summaries:
        raise SystemExit(f"error: no summaries under {args.results}/{grid}; run the grid first")
    figures = args.figures
    os.makedirs(figures, exist_ok=True)
    rel = os.path.relpath(figures, os.path.dirname(os.path.abspath(args.out)))
    if all(s.get("tag") for s in summaries):  # a sweep: one table, a row per cell
        _write_section(args.out, grid, "\n".join(sweep_table(grid, args.grid, summaries)))
        return
    diverged = [s for s in summaries if s.get("status") == "diverged"]
    summaries = [s for s in summaries if s.get("status") != "diverged"]
    by_group: dict = {}
    for s in summaries:
        by_group.setdefault(group_key(s), {}).setdefault(s["method"], []).append(s)
    for runs in by_group.values():
        for recs in runs.values():
            recs.sort(key=lambda s: s["seed"])
    lines = [f"## Grid `{grid}` (`{args.grid}`)", ""]
    verdicts = []
    for key, runs in sorted(by_group.items()):
        dataset, model, budget, tag = key
        budget = json.loads(budget)
        slug = f"{grid}_{dataset}_{model}" + (f"_{tag}" if tag else "")
        lines.append(f"### {dataset}, {model}" + (f" ({tag})" if tag else ""))
        lines.append("")
        lines.append(
            f"Budget: {budget['train_subset']} training images, {budget['phase1_epochs']} + "
            f"{budget['phase2_epochs']} epochs, validation {budget['val_size']}, held-out test "
            f"{budget['test_size']} images. Test split unless marked."
        )
        lines.append("")
        lines += group_table(runs)
        lines.append("")
        if "baseline" in runs and "nm_hebb" in runs:
            d = paired_diffs(runs, "nm_hebb", "top1")
            claim = PAPER_TOP1_GAIN.get(dataset)
            if claim:
                verdicts.append(
                    f"| {dataset} Top-1 +{claim[0]}–{claim[1]} pp ({model}) | "
                    f"{verdict_top1(d, claim)} |"
                )
            dn = paired_diffs(runs, "nm_hebb", "nmi")
            if len(dn) >= 2:
                m, lo, hi = t_interval(dn)
                verdicts.append(
                    f"| NMI up to +{PAPER_NMI_GAIN} ({dataset}, {model}) | Δ NMI {m:+.3f}, 95% CI "
                    f"[{lo:+.3f}, {hi:+.3f}] |"
                )
            _figure_bars(
                "top1",
                runs,
                os.path.join(figures, f"{slug}_bars.png"),
                f"{dataset} {model}: held-out test Top-1 and NMI (bars: mean; dots: seeds)",
            )
            _figure_gate(
                runs,
                os.path.join(figures, f"{slug}_gate.png"),
                f"{dataset} {model}: the neuromodulator during phase 1",
            )
            _figure_terms(
                runs,
                os.path.join(figures, f"{slug}_terms.png"),
                f"{dataset} {model}: loss terms (log scale)",
            )
            lines.append(
                f"![bars]({rel}/{slug}_bars.png) ![gate]({rel}/{slug}_gate.png) "
                f"![terms]({rel}/{slug}_terms.png)"
            )
            lines.append("")
        lines.append("Loss terms over phase 1 (mean of the logged window means) and the gate:")
        lines.append("")
        lines += term_table(runs)
        lines.append("")
        walls = [s["seconds"]["total"] for rs in runs.values() for s in rs if s["seconds"]["total"]]
        if walls:
            lines.append(
                f"Wall time per run (train + both evaluations, 2-core CPU): median "
                f"{np.median(walls) / 60:.1f} min (min {min(walls) / 60:.1f}, max "
                f"{max(walls) / 60:.1f})."
            )
            lines.append("")
    if diverged:
        lines.append(
            "Diverged (non-finite loss; no evaluation): "
            + ", ".join(f"{d['run']} ({d['error']})" for d in diverged)
            + "."
        )
        lines.append("")
    text = "\n".join(lines)
    if verdicts:
        text = "| claim (paper) | our result |\n|---|---|\n" + "\n".join(verdicts) + "\n\n" + text
    _write_section(args.out, grid, text)


def _phase1_mean(s: dict, key: str) -> float:
    vals = [
        v
        for v, m in zip(s["curves"].get(key, []), phase1_mask(s), strict=False)
        if m and v is not None
    ]
    return float(np.mean(vals)) if vals else float("nan")


def sweep_table(grid: str, spec: str, summaries: list[dict]) -> list[str]:
    """One row per sweep cell: λs, outcome, and how big each gated term is next to CE."""
    lines = [
        f"## Grid `{grid}` (`{spec}`)",
        "",
        "| λ_hebb | λ_ewc | val Top-1 % | test Top-1 % | test NMI | CE | λ_hebb R_Hebb | "
        "λ_ewc R_EWC | gated terms / CE | ν (mean) | ν(L=2.3) first → last |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for s in summaries:
        o = s["overrides"]
        c = s["curves"]
        ref = [v for v in c.get("train/nm/gate_at_ce=2.3", []) if v is not None]
        ce = _phase1_mean(s, "train/terms/ce")
        hw = _phase1_mean(s, "train/terms/hebb_weighted")
        ew = _phase1_mean(s, "train/terms/ewc_weighted")
        gate = _phase1_mean(s, "train/gate")
        if s.get("status") == "diverged":
            outcome = ["diverged", "–", "–"]
        else:
            outcome = [
                f"{100 * s['eval']['val']['top1']:.1f}",
                f"{100 * s['eval']['test']['top1']:.1f}",
                f"{s['eval']['test']['nmi']:.3f}",
            ]
        rows.append(
            (
                o["hebb.weight"],
                o["ewc.weight"],
                [
                    f"{o['hebb.weight']:g}",
                    f"{o['ewc.weight']:g}",
                    *outcome,
                    f"{ce:.3f}",
                    f"{hw:.3g}",
                    f"{ew:.3g}",
                    f"{100 * (hw + ew) / ce:.1f}%" if ce == ce else "–",
                    f"{gate:.3f}",
                    f"{ref[0]:.3f} → {ref[-1]:.3f}" if ref else "–",
                ],
            )
        )
    for _, _, cells in sorted(rows, key=lambda r: (r[0], r[1])):
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Term sizes are phase-1 means of the logged window means (the gated terms as they enter "
        "the loss, i.e. already multiplied by ν). One seed for every cell (same initialisation "
        "and batches), so cells differ only in λ; seed-to-seed spread at this budget is in "
        "experiments/parity/README.md."
    )
    return lines


def _write_section(out: str, grid: str, text: str) -> None:
    """Replaces (or appends) the grid's section of ``out`` between its markers."""
    begin, end = f"<!-- grid {grid} -->", f"<!-- /grid {grid} -->"
    doc = open(out).read() if os.path.exists(out) else "# Results\n\n"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n{text}\n{end}{tail}"
    else:
        doc = f"{doc.rstrip()}\n\n{begin}\n{text}\n{end}\n"
    with open(out, "w") as f:
        f.write(doc)
    print(text)
    print(f"wrote {out}")
