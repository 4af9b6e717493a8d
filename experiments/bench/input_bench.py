r"""Input-pipeline throughput (images/s) with and without augmentation, per source.

  python experiments/bench/input_bench.py --npz ../shared/data/cifar10_train.npz --batch 128
  python experiments/bench/input_bench.py --sources digits --batch 128

Measures ``Dataset.train_batch`` (what the trainer calls every step: index the epoch permutation,
gather, augment, normalise) and P×K ``balanced`` batches, after the dataset is built (the one-off
JPEG decode / cache load is timed separately as ``build_s``). Compare with the training step's
consumption, e.g. ``step_bench.py``'s images/s: the trainer prepares the next batch on the host
while the device runs the current step, so the pipeline must be several times faster than the step.
"""

from __future__ import annotations

import argparse
import json
import time

import ml_collections
import numpy as np

from nm_hebb_jax.data import build_dataset


def data_config(source: str, path: str, name: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.source = source
    c.name = name
    c.path = path
    c.val_size = 1000 if source == "npz" else 200
    c.val_seed = 0
    c.eval_split = "val"
    c.augment = True
    c.image_size = 32
    return c


def bench(ds, batch: int, steps: int, **kw) -> dict:
    ds.train_batch(0, batch_size=batch, **kw)  # warm caches
    times = []
    for s in range(1, steps + 1):
        t0 = time.perf_counter()
        ds.train_batch(s, batch_size=batch, **kw)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {"median_ms": 1e3 * med, "images_per_s": batch / med}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", default="digits,npz")
    p.add_argument("--npz", default="../shared/data/cifar10_train.npz")
    p.add_argument("--name", default="cifar10")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", default="")
    args = p.parse_args()
    report = {"batch": args.batch, "steps": args.steps, "sources": {}}
    for source in [s for s in args.sources.split(",") if s]:
        cfg = data_config(
            source, args.npz if source == "npz" else "", args.name if source == "npz" else "digits"
        )
        t0 = time.perf_counter()
        ds = build_dataset(cfg, seed=0)
        build_s = time.perf_counter() - t0
        rows = {
            "augment": bench(ds, args.batch, args.steps, augment=True),
            "no_augment": bench(ds, args.batch, args.steps, augment=False),
            "balanced_pxk": bench(ds, args.batch, args.steps, augment=True, balanced=True),
        }
        report["sources"][source] = {"build_s": build_s, "train_size": ds.train_size, **rows}
        print(
            f"{source:7s} build {build_s:6.2f} s  "
            + "  ".join(
                f"{k}: {v['images_per_s']:9.0f} img/s ({v['median_ms']:.2f} ms)"
                for k, v in rows.items()
            )
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
