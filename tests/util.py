"""Helpers shared by the trainer and evaluation tests."""

import importlib.util
import os

import jax
import ml_collections
import numpy as np

from nm_hebb_jax.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = "smoke") -> ml_collections.ConfigDict:
    """``configs/<name>.py``'s ``get_config(arg)``."""
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def restore_params(workdir, step=None):
    """``(params, meta)`` of a workdir's latest (or ``step``) checkpoint."""
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        tree, meta = ckpt.restore_raw(step, sharding=sharding)
    finally:
        ckpt.close()
    return tree["train"]["params"], meta


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
