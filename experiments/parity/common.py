"""Shared by the parity driver and its PyTorch side: the recipe config, overrides, result files.

Imports neither JAX nor PyTorch (the driver stays light; each side runs in its own process).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "parity.py")
RESULTS = os.path.join(ROOT, "experiments", "parity", "results")


def load_config(model: str, overrides: list[str] = ()):
    """``configs/parity.py:<model>`` with ``key=value`` overrides applied (values as literals)."""
    spec = importlib.util.spec_from_file_location("configs_parity", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(model)
    for item in overrides:
        key, value = parse_override(item)
        *groups, leaf = key.split(".")
        node = config
        for g in groups:
            node = node[g]
        old = node[leaf]
        node[leaf] = (
            type(old)(value)
            if isinstance(old, (int, float)) and not isinstance(old, bool)
            else value
        )
    return config


def parse_override(item: str) -> tuple[str, object]:
    """``'optim.warmup_epochs=2'`` -> ``('optim.warmup_epochs', 2)`` (Python literal or string)."""
    if "=" not in item:
        raise SystemExit(f"error: override {item!r} must look like group.field=value")
    key, raw = item.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def variant_name(overrides: list[str]) -> str:
    """``'default'`` or a file-name-safe slug of the overrides (``optim.warmup_epochs=2`` ->
    ``warmup_epochs2``)."""
    if not overrides:
        return "default"
    parts = []
    for item in overrides:
        key, value = parse_override(item)
        parts.append(f"{key.split('.')[-1]}{value}".replace("/", "_").replace(" ", ""))
    return "-".join(parts)


def result_path(model: str, side: str, seed: int, variant: str, results: str = RESULTS) -> str:
    return os.path.join(results, variant, f"{model}_{side}_s{seed}.json")


def schedule(step: int, *, peak: float, total: int, warmup: int) -> float:
    """The trainer's rate (``nm_hebb_jax.train.state.make_schedule``, optax's warm-up + cosine)
    written out: linear from 0 over ``warmup`` steps, then cosine to 0 at ``total``."""
    total = max(int(total), 1)
    warmup = int(min(max(warmup, 0), total - 1))
    if step < warmup:
        return peak * step / warmup
    frac = min(step - warmup, total - warmup) / (total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * frac))


def write_json(path: str, record: dict) -> None:
    """Writes ``record`` atomically (a killed run never leaves half a file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
