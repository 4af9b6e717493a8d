"""Runs the docstring examples of every nm_hebb_jax.losses module, and checks the public API."""

from __future__ import annotations

import doctest
import importlib

import pytest

import nm_hebb_jax.losses as losses

MODULES = ["classification", "consolidation", "gate", "hebbian", "hebbian_rules", "metric"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"nm_hebb_jax.losses.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_every_public_function_is_documented_with_an_example_and_a_reference():
    for name in losses.__all__:
        obj = getattr(losses, name)
        if callable(obj):
            doc = obj.__doc__ or ""
            assert all(section in doc for section in ("Args:", "Returns:", ">>>", "References:")), (
                name
            )
