"""Evaluation CLI and notebook API on a finished smoke run, and evaluation as careful as training:
verified checkpoints with fallback, a damaged ``--step``/``--best`` refused, results printed when
pictures cannot be written, damaged files named."""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import nm_hebb_jax
from nm_hebb_jax.eval import plots
from nm_hebb_jax.eval.run import LoadError
from nm_hebb_jax.evaluate import evaluate_workdir, runtime_settings
from tests.test_reliability import _damage
from tests.util import ROOT

pytestmark = pytest.mark.slow


def _snapshot(workdir):
    out = {}
    for sub in ("checkpoints", "best", "tb"):
        for root, _, files in os.walk(os.path.join(workdir, sub)):
            for f in files:
                path = os.path.join(root, f)
                out[path] = os.path.getmtime(path)
    return out


def test_evaluate_matches_training_and_writes_pictures(smoke_run):
    config, workdir, summary = smoke_run
    before = _snapshot(workdir)
    out = evaluate_workdir(workdir)
    # Exact over the whole split: the same Top-1 as the trainer's end-of-phase-2 evaluation.
    assert out["num_examples"] == config.data.val_size
    assert out["top1"] == pytest.approx(summary["phase2"]["top1"], abs=1e-9)
    for key in (
        "nmi",
        "knn_top1",
        "filters/filter_redundancy",
        "filters/class_selectivity_mean",
        "filters/dead_channel_fraction",
    ):
        assert 0.0 <= out[key] <= 1.0, key
    assert out["step"] == summary["final_step"] and out["provenance"]["git_commit"]
    outdir = os.path.join(workdir, "eval", f"val_step{out['step']}")
    patches = "top_patches_stage2_block0_conv1.png"  # the tapped layer's
    assert str(out["pictures"]["patches"]) == os.path.join(outdir, patches)
    for name in ("tsne.png", "filters_first_layer.png", "training_curves.png", patches):
        with Image.open(os.path.join(outdir, name)) as im:
            assert min(im.size) > 100
    assert json.load(open(os.path.join(outdir, "results.json")))["top1"] == out["top1"]
    assert _snapshot(workdir) == before  # training artifacts untouched


def test_evaluate_any_npz_split_best_and_step(smoke_run, tmp_path):
    _, workdir, summary = smoke_run
    rng = np.random.default_rng(0)
    n = 37  # not a multiple of the eval batch: exercises the padded, masked last batch
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    path = tmp_path / "held_out.npz"
    np.savez(path, x_test=images, y_test=labels)
    out = evaluate_workdir(workdir, data=str(path), split="test", make_plots=False)
    assert out["num_examples"] == n and out["split"] == "test"
    run = nm_hebb_jax.load_run(workdir)
    np.testing.assert_allclose(out["top1"], np.mean(run.predict(images) == labels))
    best = evaluate_workdir(workdir, best=True, make_plots=False)
    assert best["top1"] == pytest.approx(summary["best_top1"], abs=1e-9)
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    early = evaluate_workdir(workdir, step=steps[0], make_plots=False)
    assert early["step"] == steps[0]
    with pytest.raises(LoadError, match="no checkpoint at step 999") as e:
        evaluate_workdir(workdir, step=999)
    assert "\n" not in str(e.value)
    np.savez(tmp_path / "small.npz", x_test=images[:, :16, :16], y_test=labels)
    with pytest.raises(LoadError, match="trained on"):
        evaluate_workdir(workdir, data=str(tmp_path / "small.npz"), split="test")


def test_load_run_api(smoke_run):
    config, workdir, _ = smoke_run
    run = nm_hebb_jax.load_run(workdir)
    images, labels = run.dataset.get_arrays("val")
    z = run.embed(images[:5])
    assert z.shape[0] == 5 and z.ndim == 2 and np.all(np.isfinite(z))
    pred = run.predict(images[:5])
    assert pred.shape == (5,) and pred.dtype.kind == "i"
    metrics = run.evaluate()
    assert metrics["num_examples"] == config.data.val_size
    with pytest.raises(LoadError, match="does not exist"):
        nm_hebb_jax.load_run("/no/such/run")


def test_runtime_settings_follow_the_run_unless_given(tmp_path):
    def write(**config):
        (tmp_path / "config.json").write_text(json.dumps(config))

    write(cpu_tuning=True, cpu_malloc_tuning=False)
    assert runtime_settings(str(tmp_path)) == {"cpu_tuning": True, "cpu_malloc_tuning": False}
    got = runtime_settings(str(tmp_path), cpu_malloc_tuning=True)
    assert got == {"cpu_tuning": True, "cpu_malloc_tuning": True}
    write(cpu_tuning=False, cpu_malloc_tuning=True)  # malloc tuning is part of cpu_tuning
    assert runtime_settings(str(tmp_path)) == {"cpu_tuning": False, "cpu_malloc_tuning": False}
    got = runtime_settings(str(tmp_path), cpu_tuning=True)
    assert got == {"cpu_tuning": True, "cpu_malloc_tuning": True}
    (tmp_path / "config.json").write_text("{not json")  # unreadable: the config defaults
    assert runtime_settings(str(tmp_path)) == {"cpu_tuning": True, "cpu_malloc_tuning": True}
    assert runtime_settings(str(tmp_path / "missing"), cpu_malloc_tuning=False) == {
        "cpu_tuning": True,
        "cpu_malloc_tuning": False,
    }


def test_cli_prints_json_last(smoke_run):
    _, workdir, _ = smoke_run
    proc = subprocess.run(
        [sys.executable, "-m", "nm_hebb_jax.evaluate", f"--workdir={workdir}", "--noplots"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "XLA_FLAGS": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"top1", "nmi", "knn_top1", "num_examples", "step", "provenance"} <= set(last)
    # the quickstart trains without the malloc setting (compile-bound); evaluation follows it
    assert last["runtime"] == {"cpu_tuning": True, "cpu_malloc_tuning": False, "malloc_applied": {}}
    bad = subprocess.run(
        [sys.executable, "-m", "nm_hebb_jax.evaluate", "--workdir=/no/such/run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: workdir /no/such/run")


def _copy(smoke_run, tmp_path, name="run"):
    _, workdir, _ = smoke_run
    target = tmp_path / name
    shutil.copytree(workdir, target)
    return target


@pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncate", "chunks", "fingerprint"])
def test_damaged_latest_checkpoint_falls_back_and_a_damaged_step_is_refused(
    smoke_run, tmp_path, how
):
    _, _, summary = smoke_run
    workdir = _copy(smoke_run, tmp_path)
    last = summary["final_step"]
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert steps[-1] == last
    _damage(workdir / "checkpoints" / str(last), how)
    with pytest.warns(RuntimeWarning, match=f"checkpoint step {last} in .* falling back"):
        out = evaluate_workdir(str(workdir), make_plots=False)
    assert out["step"] == steps[-2]
    with pytest.raises(LoadError) as e:
        evaluate_workdir(str(workdir), step=last, make_plots=False)
    message = str(e.value)
    assert message.startswith(f"checkpoint step {last} in {workdir}/checkpoints is damaged")
    assert message.endswith(
        f"other steps: {steps[:-1]}; pass one of them to --step, or drop --step for the newest "
        "intact checkpoint"
    )
    assert "\n" not in message


def test_a_damaged_best_checkpoint_is_refused(smoke_run, tmp_path):
    workdir = _copy(smoke_run, tmp_path)
    (best,) = os.listdir(workdir / "best")
    _damage(workdir / "best" / best, "fingerprint")
    with pytest.raises(LoadError, match="drop --best to evaluate the newest intact regular"):
        evaluate_workdir(str(workdir), best=True, make_plots=False)


def test_results_are_returned_when_the_pictures_cannot_be_written(smoke_run, tmp_path, monkeypatch):
    workdir = _copy(smoke_run, tmp_path)

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(plots.tempfile, "TemporaryFile", read_only)
    with pytest.warns(RuntimeWarning, match=r"cannot write to .*\(Read-only file system\): the"):
        out = evaluate_workdir(str(workdir), make_plots=False)
    assert out["outdir"] is None and out["top1"] >= 0.0
    with pytest.raises(LoadError, match=r"--outdir .* cannot be written \(Read-only"):
        evaluate_workdir(str(workdir), make_plots=False, outdir=str(tmp_path / "elsewhere"))
    monkeypatch.undo()
    out = evaluate_workdir(str(workdir), make_plots=False, outdir=str(tmp_path / "elsewhere"))
    assert json.load(open(tmp_path / "elsewhere" / "results.json"))["top1"] == out["top1"]


def test_a_full_disk_while_writing_pictures_still_returns_the_results(
    smoke_run, tmp_path, monkeypatch
):
    workdir = _copy(smoke_run, tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(plots, "plot_embedding_tsne", full)
    with pytest.warns(RuntimeWarning, match=r"writing the pictures to .* failed \(No space left"):
        out = evaluate_workdir(str(workdir))
    assert out["outdir"] is None and out["num_examples"] > 0


def test_damaged_config_and_metrics_files_are_named(smoke_run, tmp_path):
    workdir = _copy(smoke_run, tmp_path)
    config = (workdir / "config.json").read_text()
    (workdir / "config.json").write_text(config[:300])
    with pytest.warns(RuntimeWarning) as caught:
        out = evaluate_workdir(str(workdir), make_plots=False)
    (message,) = [str(w.message) for w in caught if "config.json" in str(w.message)]
    assert message.startswith(f"{workdir}/config.json (the run's config) is damaged: not valid")
    assert message.endswith(f"using the copy saved with checkpoint step {out['step']}")
    (workdir / "config.json").write_text(config)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train/lo\x00\x01 cut short\n')
    lines = len((workdir / "metrics.jsonl").read_text().splitlines())
    damaged = rf"metrics.jsonl has 1 damaged line\(s\) \(line {lines}\)"
    with pytest.warns(RuntimeWarning, match=damaged):
        evaluate_workdir(str(workdir))
    # A damaged config.json and no copy in the checkpoint (written before this version): named.
    from nm_hebb_jax.train.writer import read_config

    (workdir / "config.json").write_text("[1, 2")
    with pytest.raises(LoadError, match=r"config.json \(the run's config\) is damaged"):
        read_config(str(workdir))
