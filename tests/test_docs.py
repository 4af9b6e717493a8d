"""The documentation stays true to the code: cited sections exist, links resolve, commands parse,
and every config field the method document names is a field of the configs."""

import importlib.util
import pathlib
import re
import shlex

import pytest

from nm_hebb_jax.config_base import get_base_config
from nm_hebb_jax.data import convert
from tests.util import ROOT as _ROOT

ROOT = pathlib.Path(_ROOT)
METHOD = ROOT / "docs" / "method.md"
SKIP_DIRS = {".venv", ".git", "runs", "build", "dist", "node_modules"}


def _repo_files(*suffixes):
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_file() and path.suffix in suffixes:
            if not any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts):
                yield path


def _hebbian_config():
    spec = importlib.util.spec_from_file_location(
        "hebbian_cnn", ROOT / "configs" / "hebbian_cnn.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_cited_sections_of_the_method_document_exist():
    text = METHOD.read_text().lower()
    cite = re.compile(r'(?:METHOD\.md|docs/method\.md)[^"\n]{0,24}((?:"[^"\n]+"(?:, )?)+)')
    cited = {}
    for path in _repo_files(".py", ".md"):
        for match in cite.finditer(path.read_text(errors="replace")):
            for name in re.findall(r'"([^"\n]+)"', match.group(1)):
                cited.setdefault(name, path.relative_to(ROOT))
    assert {"Metrics", "How φ learns", "Hebbian regulariser"} <= set(cited)
    missing = {n: str(p) for n, p in cited.items() if " ".join(n.lower().split()) not in text}
    assert not missing, f"sections cited but not in docs/method.md: {missing}"


def test_method_document_names_only_real_config_fields():
    base, hebbian = get_base_config(), _hebbian_config()
    section = METHOD.read_text().split("## Declared interpretations", 1)[1]
    fields = set(re.findall(r"`([a-z_0-9]+(?:\.[a-z_0-9*]+)*)`", section))
    fields -= {"hebb", "ewc", "none", "activations", "weights", "pre", "post", "maxpool"}
    fields -= {"hypergradient", "joint_prior", "fixed", "recompute", "reuse", "adam", "sgd"}
    fields -= {"default_hebb_layer"}  # a backbone attribute, the default of hebb.layers
    assert {"hebb.layers", "nm.phi_optimizer", "nm.hyper_norm_decay", "flip"} <= fields

    def known(config, name):
        node = config
        for part in name.split("."):
            if part == "*":
                return True
            if part not in node:
                return False
            node = node[part]
        return True

    unknown = sorted(f for f in fields if not (known(base, f) or known(hebbian, f)))
    assert not unknown, f"docs/method.md names fields no config has: {unknown}"


def test_relative_links_in_readme_and_docs_resolve():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def _convert_commands():
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    sources += [*sorted((ROOT / "configs").glob("*.py")), ROOT / "nm_hebb_jax/data/convert.py"]
    for path in sources:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if "python -m nm_hebb_jax.data.convert " in line:
                command = line.split("python -m nm_hebb_jax.data.convert ", 1)[1]
                command = command.split("#", 1)[0].split("`", 1)[0].strip()
                yield path.relative_to(ROOT), command


def test_documented_converter_commands_parse():
    commands = list(_convert_commands())
    assert len(commands) >= 8
    parser = convert.build_parser()
    for where, command in commands:
        if command.startswith("SOURCE"):  # the synopsis
            continue
        try:
            args = parser.parse_args(shlex.split(command))
        except SystemExit:
            pytest.fail(f"{where}: `{command}` does not parse")
        assert args.out.endswith(".npz"), (where, command)
