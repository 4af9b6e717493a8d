"""Fault tolerance: SIGKILL/SIGTERM and relaunch, damaged checkpoints, NaN skipping, 2 processes.

Subprocess runs use ``main.py`` exactly as a user would, with 4 simulated CPU devices like the
in-process smoke run they are compared with, and share a persistent compilation cache.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nm_hebb_jax.train.checkpoint import DIGEST_KEY
from nm_hebb_jax.train.loop import RunError, train_and_evaluate
from tests.util import ROOT, assert_trees_close, load_config, restore_params

pytestmark = pytest.mark.slow
SMOKE = "--config=configs/quickstart.py:smoke"


def _env(devices=4):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_main(workdir, *flags, devices=4, timeout=600):
    return subprocess.run(
        [sys.executable, "main.py", SMOKE, f"--workdir={workdir}", *flags],
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_bitwise_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigkill_at_five_random_points_then_relaunch_is_bitwise_uninterrupted(smoke_run, tmp_path):
    config, reference, _ = smoke_run
    total = config.phase1.num_steps + config.phase2.num_steps
    points = sorted(random.Random(7).sample(range(total), 5))
    workdir = tmp_path / "killed"
    for k in points:
        proc = run_main(workdir, f"--config.debug.kill_at_step={k}")
        assert proc.returncode == -signal.SIGKILL, (k, proc.stderr[-2000:])
    proc = run_main(workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["final_step"] == total
    resumed, _ = restore_params(str(workdir))
    expected, _ = restore_params(reference)
    # Same program, same inputs, same devices: XLA:CPU reproduces the run bit for bit.
    assert_bitwise_equal(resumed, expected)


def test_external_sigterm_saves_exits_zero_and_relaunch_finishes(tmp_path):
    workdir = tmp_path / "term"
    flags = ["--config.phase1.num_steps=60", "--config.phase2.num_steps=10"]
    proc = subprocess.Popen(
        [sys.executable, "main.py", SMOKE, f"--workdir={workdir}", *flags],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any('"train/loss"' in line for line in metrics.open()):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGTERM: saved a checkpoint at step" in err
    _, meta = restore_params(str(workdir))
    assert 0 < meta["step"] < 70 and not meta.get("finished")
    again = run_main(workdir, *flags)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["final_step"] == 70


def _damage(step_dir, how):
    """Damages a checkpoint the way disks and interrupted copies do."""
    state = step_dir / "state"
    if how == "truncate":  # every data file cut in half
        for root, _, files in os.walk(state):
            for f in files:
                path = os.path.join(root, f)
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
    elif how == "delete":  # the array data of the checkpoint is gone, its metadata remains
        shutil.rmtree(state / "ocdbt.process_0")
        shutil.rmtree(state / "d", ignore_errors=True)
    elif how == "fingerprint":  # still parses, but the content is not what was saved
        meta_file = step_dir / "meta" / "metadata"
        meta = json.loads(meta_file.read_text())
        meta[DIGEST_KEY] = "0" * 64
        meta_file.write_text(json.dumps(meta))
    elif how == "chunks":  # random bytes written over the middle of every array data chunk
        rng = random.Random(0)
        for root, _, files in os.walk(state):
            for f in files:
                path = os.path.join(root, f)
                if os.sep + "d" + os.sep not in path:
                    continue
                size = os.path.getsize(path)
                with open(path, "r+b") as fh:
                    fh.seek(size // 2)
                    fh.write(bytes(rng.randrange(256) for _ in range(min(64, size - size // 2))))


# Restoring a checkpoint whose data directory is gone (or whose chunks are garbage) fails inside
# orbax's asyncio.run(); a read that is still in flight on a worker thread then completes and
# calls back into the closed loop ("RuntimeError: Event loop is closed", reported by pytest as
# unraisable, in some runs). That is orbax's error path, after ours has already caught the
# failure; it is ignored for these cases only.
_ORBAX_CLOSED_LOOP = pytest.mark.filterwarnings(
    "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"
)


@pytest.mark.parametrize(
    "how",
    [
        "truncate",
        pytest.param("delete", marks=_ORBAX_CLOSED_LOOP),
        "fingerprint",
        pytest.param("chunks", marks=_ORBAX_CLOSED_LOOP),
    ],
)
def test_damaged_latest_checkpoint_falls_back_to_previous_good_step(smoke_run, tmp_path, how):
    _, reference, _ = smoke_run
    workdir = tmp_path / how
    c = load_config("quickstart")
    c.debug.sigterm_at_step = 8  # checkpoints at 5 (periodic), 6 (phase-1 end), 9 (SIGTERM)
    from nm_hebb_jax.train.loop import Preempted

    with pytest.raises(Preempted):
        train_and_evaluate(c, str(workdir))
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert steps[-1] == 9
    _damage(workdir / "checkpoints" / "9", how)
    with pytest.warns(RuntimeWarning, match="checkpoint step 9 .* falling back"):
        summary = train_and_evaluate(load_config("quickstart"), str(workdir))
    assert summary["final_step"] == 10
    resumed, _ = restore_params(str(workdir))
    expected, _ = restore_params(reference)
    assert_trees_close(resumed, expected, rtol=1e-5, atol=1e-6)


def test_all_checkpoints_damaged_is_a_clear_error(tmp_path):
    workdir = tmp_path / "ruined"
    c = load_config("quickstart")
    c.debug.sigterm_at_step = 8
    from nm_hebb_jax.train.loop import Preempted

    with pytest.raises(Preempted):
        train_and_evaluate(c, str(workdir))
    for s in os.listdir(workdir / "checkpoints"):
        if s.isdigit():
            _damage(workdir / "checkpoints" / s, "fingerprint")
    with pytest.warns(RuntimeWarning), pytest.raises(RunError, match="no readable checkpoint") as e:
        train_and_evaluate(load_config("quickstart"), str(workdir))
    assert "\n" not in str(e.value)


def test_skip_nonfinite_updates_switch(tmp_path):
    c = load_config("quickstart")
    c.debug.nan_at_step = 3
    c.skip_nonfinite = True
    workdir = tmp_path / "skip"
    summary = train_and_evaluate(c, str(workdir))
    assert summary["final_step"] == 10
    params, _ = restore_params(str(workdir))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert sum(r.get("train/nonfinite_steps", 0) for r in records) == 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_and_both_resume(smoke_run, tmp_path):
    """2 processes x 2 CPU devices (coordinator on 127.0.0.1) vs 1 process x 4 devices."""
    _, reference, _ = smoke_run
    workdir = tmp_path / "multi"

    def launch(*extra):
        port = _free_port()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "main.py",
                    SMOKE,
                    f"--workdir={workdir}",
                    f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                    "--config.distributed.num_processes=2",
                    f"--config.distributed.process_id={i}",
                    "--config.distributed.timeout_s=120",
                    *extra,
                ],
                cwd=ROOT,
                env=_env(devices=2),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-3000:]
        return outs

    outs = launch("--config.debug.sigterm_at_step=3")  # both stop and save at step 4
    assert all("received SIGTERM" in err for _, err in outs)
    _, meta = restore_params(str(workdir))
    assert meta["step"] == 4
    outs = launch()  # both resume from step 4
    assert all(json.loads(o.strip().splitlines()[-1])["final_step"] == 10 for o, _ in outs)
    # Metrics and provenance are written once (by process 0).
    prov = [json.loads(line) for line in open(workdir / "provenance.jsonl")]
    assert len(prov) == 2 and all(p["process_count"] == 2 for p in prov)
    steps = [
        json.loads(line)["step"]
        for line in open(workdir / "metrics.jsonl")
        if '"train/loss"' in line
    ]
    assert len(steps) == len(set(steps))
    multi, _ = restore_params(str(workdir))
    single, _ = restore_params(reference)
    assert_trees_close(multi, single, rtol=1e-3, atol=5e-5)
