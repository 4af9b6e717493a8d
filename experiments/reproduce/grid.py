"""The runs of a reproduction grid: names, commands, held-out test files, time estimates.

Imports no JAX (the driver only starts processes and reads files).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "experiments", "reproduce", "results")

#: CE training step (batch 128, 32x32, fp32) on the 2-core development VM, seconds
#: (the ``ce`` rows of experiments/bench/results/step_bench_*.json); a run's time scales with the
#: pixels per image. Used only by ``--dry-run`` until the grid has measured runs of the group.
STEP_SECONDS = {
    "vgg11": 0.40,
    "resnet18": 1.30,
    "mobilenet_v2": 0.87,
    "efficientnet_v2_s": 1.10,
    "densenet121": 4.90,
}
IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64, "digits": 32}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of a grid."""

    grid: str
    group: dict
    method: str
    seed: int

    @property
    def dataset(self) -> str:
        return self.group["dataset"]

    @property
    def model(self) -> str:
        return self.group["model"]

    @property
    def name(self) -> str:
        tag = f"_{self.group['tag']}" if self.group.get("tag") else ""
        return f"{self.dataset}_{self.model}_{self.method}{tag}_s{self.seed}"

    def summary_path(self, results: str = RESULTS) -> str:
        return os.path.join(results, self.grid, f"{self.name}.json")

    def workdir(self, workroot: str) -> str:
        return os.path.join(workroot, self.grid, self.name)

    def data_path(self, data_root: str) -> str:
        return os.path.join(data_root, self.group["data_file"])

    def holdout_path(self, holdout_root: str) -> str:
        b = self.group["budget"]
        return os.path.join(
            holdout_root,
            f"{self.dataset}_holdout_t{b['train_subset']}_v{b['val_size']}_n{b['test_size']}.npz",
        )

    @property
    def test_split(self) -> str | None:
        """The dataset's own split to report (``'test'``, ``'validation'``); ``None`` = a held-out
        file cut from the training file (:func:`experiments.reproduce.__main__.make_holdout`)."""
        return self.group.get("test_split")

    def config_overrides(self, data_root: str) -> dict:
        """Every config field the grid sets for this run (beyond the config file's defaults)."""
        b = self.group["budget"]
        out = {
            "method": self.method,
            "model.name": self.model,
            "seed": self.seed,
            "data.val_size": b["val_size"],
            "data.val_seed": 0,
            "data.train_subset": b["train_subset"],
            "log.progress": False,
        }
        if self.group.get("source", "npz") == "npz":
            out["data.source"] = "npz"
            out["data.path"] = self.data_path(data_root)
        else:  # e.g. 'tfds': prepared data under --data-root (its data_dir)
            out["data.source"] = self.group["source"]
            out["data.data_dir"] = data_root
        if not self.group.get("config_arg"):
            out["phase1.epochs"] = float(b["phase1_epochs"])
            out["phase2.epochs"] = float(b["phase2_epochs"])
        out.update(self.group.get("overrides", {}))
        return out

    def train_command(self, workroot: str, data_root: str) -> list[str]:
        arg = self.group.get("config_arg", "")
        config = os.path.join(ROOT, self.group["config"]) + (f":{arg}" if arg else "")
        return [
            sys.executable,
            os.path.join(ROOT, "main.py"),
            f"--config={config}",
            f"--workdir={self.workdir(workroot)}",
            *(f"--config.{k}={v}" for k, v in self.config_overrides(data_root).items()),
        ]

    def estimate_seconds(self, measured: dict | None = None) -> float:
        """Training + evaluation time: measured on a finished run of the same group and method
        family if there is one, else from :data:`STEP_SECONDS`."""
        if measured:
            return measured["seconds"]
        b = self.group["budget"]
        steps_per_epoch = max(b["train_subset"] or b.get("full_train", 50000), 1000) // 128
        epochs = b["phase1_epochs"] + b["phase2_epochs"]
        pixels = (IMAGE_SIZE.get(self.dataset, 32) / 32) ** 2
        step = STEP_SECONDS.get(self.model, 1.0) * pixels
        overhead = (
            1.1
            if self.method
            in ("nm_hebb", "phase1_only", "no_gate", "hebb_only", "ewc_only", "phase2_only")
            else 1.0
        )
        return steps_per_epoch * epochs * step * overhead + 120.0 * pixels


def load_grid(spec: str) -> tuple[str, list[dict]]:
    """``configs/<file>.py[:arg]`` -> ``(grid name, groups)``."""
    path, _, arg = spec.partition(":")
    path = path if os.path.isabs(path) else os.path.join(ROOT, path)
    if not os.path.exists(path):
        raise SystemExit(f"error: grid file {path} does not exist; pass --grid=configs/<file>.py")
    module_spec = importlib.util.spec_from_file_location("reproduce_grid", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        config = module.get_config(arg or None)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return str(config.name), [dict(g) for g in config.groups]


def expand(grid: str, groups: list[dict]) -> list[RunSpec]:
    """Every run of the groups, seeds outermost (a partial grid is balanced over methods)."""
    runs = []
    max_seeds = max((len(g["seeds"]) for g in groups), default=0)
    for i in range(max_seeds):
        for g in groups:
            if i < len(g["seeds"]):
                runs.extend(RunSpec(grid, g, m, g["seeds"][i]) for m in g["methods"])
    return runs


def select(runs: list[RunSpec], only: list[str]) -> list[RunSpec]:
    """Runs whose attributes match every ``key=value`` of ``only`` (keys: dataset, model,
    method, seed, tag; a value may list alternatives separated by ``|``)."""
    out = runs
    for item in only:
        key, _, value = item.partition("=")
        allowed = set(value.split("|"))
        if key not in ("dataset", "model", "method", "seed", "tag"):
            raise SystemExit(
                f"error: --only {item!r}: key must be dataset, model, method, seed, tag"
            )
        out = [
            r
            for r in out
            if str(r.group.get(key, "") if key == "tag" else getattr(r, key)) in allowed
        ]
    return out


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
