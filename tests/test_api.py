"""The public API as README shows it: the library example runs, losses stay free of model code."""

import ast
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from nm_hebb_jax import losses, models
from nm_hebb_jax.neuromod import init_neuromod
from nm_hebb_jax.train.ewc import init_ewc_state
from tests.util import ROOT


def _readme_library_example() -> str:
    text = (pathlib.Path(ROOT) / "README.md").read_text()
    section = text.split("## The library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs_and_returns_the_terms_it_shows(monkeypatch):
    """README's phase-1 objective, run as written on the tiny ResNet-18 (the example builds the
    full-size one: get_model is wrapped to add the smoke widths), with the inputs the reader
    supplies: params ``{'backbone', 'neuromod'}``, state, batch and rng."""
    real_get_model = models.get_model

    def tiny_get_model(name, **kw):
        return real_get_model(name, **{**models.smoke_overrides(name), **kw})

    monkeypatch.setattr(models, "get_model", tiny_get_model)
    model = tiny_get_model("resnet18", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    params = {"backbone": variables["params"], "neuromod": init_neuromod(jax.random.key(1))}
    namespace = {
        "params": params,
        "state": {
            "batch_stats": variables["batch_stats"],
            "ewc": init_ewc_state(params["backbone"]),
        },
        "batch": {"image": jnp.ones((4, 32, 32, 3)), "label": jnp.arange(4)},
        "rng": jax.random.key(2),
    }
    exec(_readme_library_example(), namespace)
    terms = namespace["aux"]["terms"]
    for name in ("ce", "hebb", "ewc", "gate_prior"):
        assert name in terms and f"{name}_weighted" in terms, name
    assert np.isfinite(float(namespace["loss"]))
    assert namespace["layer"] == "stage2_block0/conv1"


def test_losses_import_no_model_or_config_code():
    root = pathlib.Path(losses.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(
                    ("nm_hebb_jax.models", "nm_hebb_jax.train", "nm_hebb_jax.config", "flax")
                ), (path, node.module)


def test_model_names_are_the_five_backbones():
    assert set(models.MODEL_NAMES) == {
        "resnet18",
        "vgg11",
        "mobilenet_v2",
        "efficientnet_v2_s",
        "densenet121",
    }
