"""The examples under ``examples/`` run, compute what they claim, and match the README."""

import importlib.util
import math
import pathlib
import re

import pytest

from tests.util import ROOT as _ROOT

ROOT = pathlib.Path(_ROOT)
EXAMPLES = ROOT / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_losses_runs_and_its_terms_add_up(capsys):
    history = _load("compose_losses").main(steps=3)
    printed = capsys.readouterr().out
    assert len(history) == 3 and printed.count("step ") == 3
    for row in history:
        assert set(row) == {
            "loss",
            "gate",
            *(f"{t}{s}" for t in ("ce", "hebb", "ewc", "gate_prior") for s in ("", "_weighted")),
        }
        assert all(math.isfinite(v) for v in row.values())
        weighted = sum(v for k, v in row.items() if k.endswith("_weighted"))
        assert row["loss"] == pytest.approx(weighted, rel=1e-5)
        assert 0.0 < row["gate"] < 1.0
        assert row["hebb"] > 0.0
        assert row["hebb_weighted"] == pytest.approx(row["gate"] * 0.1 * row["hebb"], rel=1e-4)
        assert row["gate_prior_weighted"] == pytest.approx(1e-3 * row["gate_prior"], rel=1e-4)
    # EWC: 0 at its anchor (step 0 runs at the anchor), positive once the parameters moved.
    assert history[0]["ewc"] == 0.0
    assert history[1]["ewc"] > 0.0 and history[2]["ewc"] > history[1]["ewc"]
    assert history[2]["ce"] < history[0]["ce"]  # three steps on one batch lower its CE


def test_single_loss_regulariser_lowers_its_term():
    example = _load("single_loss")
    with_hebb = example.main(steps=100, hebb_weight=1.0)
    without = example.main(steps=100, hebb_weight=0.0)
    assert with_hebb["accuracy"] > 0.6 and without["accuracy"] > 0.6  # chance is 0.1
    assert with_hebb["hebb"] < 0.7 * without["hebb"]


def test_readme_shows_the_compose_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    source = (EXAMPLES / "compose_losses.py").read_text()
    assert source in blocks, "README's library example differs from examples/compose_losses.py"
    assert "examples/single_loss.py" in readme
