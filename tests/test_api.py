"""The public API as README shows it: the library example runs, losses stay free of model code."""

import ast
import pathlib
import re

from nm_hebb_jax import losses, models
from tests.util import ROOT


def _readme_library_example() -> str:
    text = (pathlib.Path(ROOT) / "README.md").read_text()
    section = text.split("## The library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


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
