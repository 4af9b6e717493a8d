"""Prints the table of experiments/hebbian_cnn/README.md from the runs' own result files.

  python experiments/hebbian_cnn/summarize.py [RUNS_DIR]   (default runs/hebbian_cnn)

Rows: every ``RUNS_DIR/*/results.jsonl`` (the trainer's final summary: last record) and every
``RUNS_DIR/*/eval/*/results.json`` (the evaluator's output), with the training steps, the
overrides that differ from configs/hebbian_cnn.py and the per-layer validation accuracies (%).
"""

import glob
import json
import os
import sys

FIELDS = ("rule", "graded", "triangle", "prune_prob", "k_winners", "epochs", "num_steps")


def _overrides(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = json.load(f)
    default = {
        "rule": "instar",
        "graded": False,
        "triangle": True,
        "prune_prob": 0.99,
        "k_winners": 1,
        "epochs": 20.0,
        "num_steps": -1,
    }
    return " ".join(f"{k}={cfg[k]}" for k in FIELDS if cfg[k] != default[k])


def _row(name, source, step, overrides, rec):
    accs = []
    for kind in ("ridge", "logistic"):
        keys = [f"decode/layer{i}/{kind}" for i in (1, 2, 3)]
        accs += [f"{100 * rec[k]:.2f}" if k in rec else "–" for k in keys]
    return f"| {name} | {source} | {step} | {overrides} | " + " | ".join(accs) + " |"


def main(root):
    print("| run | from | step | overrides | ridge L1 | L2 | L3 | softmax L1 | L2 | L3 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run_dir in sorted(glob.glob(os.path.join(root, "*"))):
        name = os.path.basename(run_dir)
        if not os.path.exists(os.path.join(run_dir, "config.json")):
            continue
        ov = _overrides(run_dir)
        path = os.path.join(run_dir, "results.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                rec = [json.loads(line) for line in f if line.strip()][-1]
            print(_row(name, "main.py", rec["step"], ov, rec))
        for res in sorted(glob.glob(os.path.join(run_dir, "eval", "*", "results.json"))):
            with open(res) as f:
                rec = json.load(f)
            print(_row(name, "evaluate", rec["step"], ov, rec))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/hebbian_cnn")
