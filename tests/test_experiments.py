"""The experiment drivers: parity's PyTorch-side schedule, the reproduction grid, its held-out
test files and (slow) a whole smoke grid run and report."""

import json
import os

import numpy as np
import pytest

from experiments.parity import common as parity
from experiments.reproduce import grid as G
from nm_hebb_jax.train.state import make_schedule


@pytest.mark.parametrize("total,warmup", [(624, 78), (100, 0), (10, 50), (7, 1)])
def test_parity_schedule_is_the_trainers(total, warmup):
    sched = make_schedule(0.1, total, warmup)
    for t in range(0, total + 2):
        np.testing.assert_allclose(
            parity.schedule(t, peak=0.1, total=total, warmup=warmup),
            float(sched(t)),
            rtol=1e-5,
            atol=1e-8,
        )


def test_parity_overrides_and_variant_names():
    c = parity.load_config("vgg11", ["optim.warmup_epochs=2", "phase1.epochs=3"])
    assert c.optim.warmup_epochs == 2.0 and isinstance(c.optim.warmup_epochs, float)
    assert c.phase1.epochs == 3.0 and c.model.name == "vgg11"
    assert parity.variant_name([]) == "default"
    assert parity.variant_name(["optim.warmup_epochs=2"]) == "warmup_epochs2"


def test_reproduce_grid_is_balanced_and_selectable():
    name, groups = G.load_grid("configs/reproduce_cpu.py")
    runs = G.expand(name, groups)
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    assert len(runs) == sum(len(g["methods"]) * len(g["seeds"]) for g in groups)
    # Seeds outermost: every method of a group runs its first seed before any second seed.
    first_seed_1 = min(i for i, r in enumerate(runs) if r.seed == 1)
    assert all(r.seed == 0 for r in runs[:first_seed_1])
    picked = G.select(runs, ["method=baseline|nm_hebb", "dataset=cifar10", "seed=0"])
    assert {r.method for r in picked} == {"baseline", "nm_hebb"} and all(
        r.seed == 0 for r in picked
    )
    # Every run of a group shares the data and schedule; only the method (and its terms) differs.
    vgg = [r for r in runs if r.model == "vgg11" and r.dataset == "cifar10" and r.seed == 0]
    fields = [{k: v for k, v in r.config_overrides("D").items() if k != "method"} for r in vgg]
    assert all(f == fields[0] for f in fields)
    cmd = vgg[0].train_command("RUNS", "D")
    assert any(a.startswith("--config.phase2.epochs=") for a in cmd)


def test_holdout_is_disjoint_from_training_and_validation(tmp_path):
    from experiments.reproduce.__main__ import make_holdout
    from nm_hebb_jax.data import build_dataset, load_npz_split
    from nm_hebb_jax.data.digits import DIGITS_CLASSES, load_digits_arrays

    x, y = load_digits_arrays(32)
    np.savez_compressed(
        tmp_path / "digits.npz", x_train=x, y_train=y, class_names=np.array(DIGITS_CLASSES)
    )
    name, groups = G.load_grid("configs/reproduce_cpu.py:smoke")
    run = G.expand(name, groups)[0]
    path = make_holdout(run, str(tmp_path), str(tmp_path / "holdout"))
    assert make_holdout(run, str(tmp_path), str(tmp_path / "holdout")) == path  # written once
    with np.load(path) as f:
        rows, labels = f["source_rows"], f["y_test"]
        np.testing.assert_array_equal(f["x_test"], x[rows])
    b = run.group["budget"]
    ds = build_dataset(
        {
            "source": "npz",
            "name": "digits",
            "path": str(tmp_path / "digits.npz"),
            "val_size": b["val_size"],
            "train_subset": b["train_subset"],
            "cache_dir": "",
        },
        seed=0,
    )
    assert rows.size == b["test_size"] == np.unique(rows).size
    assert not set(rows) & set(ds.source_rows("train"))
    assert not set(rows) & set(ds.source_rows("val"))
    np.testing.assert_array_equal(labels, y[rows])
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 3  # stratified over the (nearly balanced) classes
    images, _ = load_npz_split(path, "test")  # the evaluation CLI's reader takes it as is
    assert images.shape == (b["test_size"], 32, 32, 3)


@pytest.mark.slow
def test_smoke_grid_runs_resumes_and_reports(tmp_path):
    from experiments.reproduce.__main__ import main
    from nm_hebb_jax.data.digits import DIGITS_CLASSES, load_digits_arrays

    x, y = load_digits_arrays(32)
    np.savez_compressed(
        tmp_path / "digits.npz", x_train=x, y_train=y, class_names=np.array(DIGITS_CLASSES)
    )
    common = [
        "--grid=configs/reproduce_cpu.py:smoke",
        f"--results={tmp_path / 'results'}",
        f"--workroot={tmp_path / 'runs'}",
    ]
    run_args = ["run", *common, f"--data-root={tmp_path}", f"--holdout-root={tmp_path / 'ho'}"]
    main(run_args)
    files = sorted(os.listdir(tmp_path / "results" / "smoke"))
    assert files == ["digits_resnet18_baseline_s0.json", "digits_resnet18_nm_hebb_s0.json"]
    s = json.load(open(tmp_path / "results" / "smoke" / files[1]))
    assert set(s["eval"]) == {"val", "test"}
    assert s["eval"]["test"]["num_examples"] == 300 and s["eval"]["val"]["num_examples"] == 200
    assert s["phase1_steps"] == 6 and s["curves"]["step"][-1] == 10
    assert "train/gate" in s["curves"] and "train/nm/gate_at_ce=2.3" in s["curves"]
    before = os.path.getmtime(tmp_path / "results" / "smoke" / files[0])
    main(run_args)  # finished runs are skipped
    assert os.path.getmtime(tmp_path / "results" / "smoke" / files[0]) == before
    out = tmp_path / "RESULTS.md"
    main(["report", *common, f"--out={out}", f"--figures={tmp_path / 'fig'}"])
    text = out.read_text()
    assert "| nm_hebb | 1 |" in text and "<!-- /grid smoke -->" in text
    assert (tmp_path / "fig" / "smoke_digits_resnet18_gate.png").exists()


def test_a_failed_run_does_not_stop_the_grid(tmp_path, monkeypatch, capsys):
    import experiments.reproduce.__main__ as driver

    done = []

    def run_one(r, args):
        if r.method == "baseline":
            raise SystemExit(f"error: training {r.name} failed (exit 2)")
        done.append(r.name)
        ev = {"top1": 0.5, "nmi": 0.1}
        return {"status": "ok", "eval": {"val": ev, "test": ev}, "seconds": {"total": 1.0}}

    monkeypatch.setattr(driver, "run_one", run_one)
    (tmp_path / "data").mkdir()
    args = [
        "run",
        "--grid=configs/reproduce_cpu.py:smoke",
        f"--results={tmp_path / 'results'}",
        f"--workroot={tmp_path / 'runs'}",
        f"--data-root={tmp_path / 'data'}",
    ]
    with pytest.raises(SystemExit, match=r"1 run\(s\) failed .*digits_resnet18_baseline_s0"):
        driver.main(args)
    assert done == ["digits_resnet18_nm_hebb_s0"]
    assert os.listdir(tmp_path / "results" / "smoke") == ["digits_resnet18_nm_hebb_s0.json"]
    assert "training digits_resnet18_baseline_s0 failed" in capsys.readouterr().err
