"""Golden check: ``configs/quickstart.py:smoke`` ends with the same state and logs the same metrics.

A refactor that does not mean to change training must leave this test green: the final train
state and EWC state of the smoke run (4 simulated CPU devices, both phases, the hypergradient, EWC
refreshes, the pairwise phase 2) are pinned bit for bit by a SHA-256 over every leaf, and every
value of every metric key in ``tests/golden/quickstart_smoke.json`` is pinned exactly (new keys may
be added to the log; timing keys are not compared).

Bit for bit holds on the machine that recorded the file (same XLA:CPU code generation); on a CPU
with other vector instructions the metrics and the per-leaf sums of the state are compared to
float32 rounding instead.
To re-record after an intended change of behaviour::

    python tests/test_golden.py --update
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys

if __name__ == "__main__":  # set up like the test session before JAX is imported
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tests.conftest  # noqa: F401  (4 simulated devices, XLA flags, the CPU runtime)

import jax  # noqa: E402
import numpy as np  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "quickstart_smoke.json")
#: Logged keys that depend on the machine's speed, not on the computation.
TIMING_KEYS = ("train/steps_per_s",)


def cpu_fingerprint() -> str:
    """The CPU model and its vector extensions: what XLA:CPU's generated code depends on."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = " ".join(
                        sorted(w for w in line.split(":", 1)[1].split() if w.startswith("avx"))
                    )
    except OSError:
        pass
    return f"{model} | {flags} | jax {jax.__version__}"


def _leaves(tree) -> list[tuple[str, np.ndarray]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return sorted((jax.tree_util.keystr(path), np.asarray(leaf)) for path, leaf in flat)


def state_digest(tree) -> dict:
    """SHA-256 over every leaf (path, dtype, shape, bytes) and per-leaf float64 sums."""
    h = hashlib.sha256()
    sums = {}
    for path, x in _leaves(tree):
        h.update(f"{path}|{x.dtype}|{x.shape}|".encode())
        h.update(np.ascontiguousarray(x).tobytes())
        if np.issubdtype(x.dtype, np.floating):
            sums[path] = [
                float(np.sum(x, dtype=np.float64)),
                float(np.sum(np.abs(x), dtype=np.float64)),
            ]
    return {"sha256": h.hexdigest(), "sums": sums}


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def record(workdir: str) -> dict:
    from nm_hebb_jax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir, read_only=True)
    try:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        tree, meta = ckpt.restore_raw(None, sharding=sharding)
    finally:
        ckpt.close()
    return {
        "machine": cpu_fingerprint(),
        "final_step": int(meta["step"]),
        "state": state_digest(tree),
        "metrics": read_metrics(workdir),
    }


def test_quickstart_smoke_matches_the_golden_record(smoke_run):
    _, workdir, summary = smoke_run
    with open(GOLDEN) as f:
        golden = json.load(f)
    got = record(workdir)
    assert got["final_step"] == golden["final_step"] == summary["final_step"]
    # Metrics: every recorded key of every record (added keys are allowed), exactly on the
    # recording machine, to float rounding elsewhere.
    exact = got["machine"] == golden["machine"]
    assert [r["step"] for r in got["metrics"]] == [r["step"] for r in golden["metrics"]]
    for old, new in zip(golden["metrics"], got["metrics"], strict=True):
        for key, value in old.items():
            assert key in new, (old["step"], key)
            if math.isnan(value):
                assert math.isnan(new[key]), (old["step"], key)
            elif exact:
                assert new[key] == value, (old["step"], key, value, new[key])
            else:
                np.testing.assert_allclose(new[key], value, rtol=1e-3, atol=1e-6, err_msg=key)
    # State: bit for bit on the recording machine; per-leaf sums to float rounding elsewhere.
    assert sorted(got["state"]["sums"]) == sorted(golden["state"]["sums"])
    if exact:
        assert got["state"]["sha256"] == golden["state"]["sha256"], _diff(got, golden)
    else:
        for path, (s, a) in golden["state"]["sums"].items():
            s2, a2 = got["state"]["sums"][path]
            tol = 1e-5 * (1 + a)
            np.testing.assert_allclose([s2, a2], [s, a], rtol=1e-4, atol=tol, err_msg=path)


def _diff(got: dict, golden: dict) -> str:
    """The leaves whose sums moved (to say where a bitwise mismatch is)."""
    moved = [
        f"{p}: {golden['state']['sums'][p]} -> {v}"
        for p, v in got["state"]["sums"].items()
        if v != golden["state"]["sums"].get(p)
    ]
    return f"{len(moved)} leaves differ: " + "; ".join(moved[:5])


def _update() -> None:
    """Re-records the golden file from a fresh smoke run set up like ``tests/conftest.py``."""
    import tempfile

    from nm_hebb_jax.train.loop import train_and_evaluate
    from tests.util import load_config

    workdir = os.path.join(tempfile.mkdtemp(), "run")
    train_and_evaluate(load_config("quickstart"), workdir)
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:
        json.dump(record(workdir), f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_golden.py --update")
    _update()
