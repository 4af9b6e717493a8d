"""Checkpoints written by earlier versions of the trainer still restore (and are still checked)."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nm_hebb_jax.train import checkpoint as ckpt_lib
from nm_hebb_jax.train.state import TrainState


def legacy_fingerprint(tree) -> str:
    """The digest checkpoints carried as ``meta['fingerprint']`` before ``state_sha256`` (written
    out here independently of the library): keystr, (shape, dtype) and bytes of each leaf in tree
    order, a 0-d leaf hashed with shape ()."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.asarray(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _tree():
    train = TrainState(
        step=jnp.asarray(474, jnp.int32),  # a 0-d leaf, as every real checkpoint has
        params={"backbone": {"kernel": jnp.arange(6.0).reshape(2, 3)}},
        batch_stats={"bn": {"mean": jnp.ones(3)}},
        opt_state={"trace": jnp.zeros((2, 3))},
        rng=jnp.asarray([1, 2], jnp.uint32),
        hyper={},
    )
    return {"train": train, "ewc": {"anchor": {"kernel": jnp.ones((2, 3))}}}


def _save_legacy(workdir, tree, fingerprint):
    mngr = ocp.CheckpointManager(
        str(workdir / "checkpoints"),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
        item_handlers=ckpt_lib._handlers(),
    )
    meta = {"phase": 1, "step": 474, "fingerprint": fingerprint}
    args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
    mngr.save(474, args=args, force=True)
    mngr.wait_until_finished()
    mngr.close()


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_the_library_computes_the_legacy_fingerprint_as_it_was_written():
    tree = _tree()
    assert ckpt_lib.fingerprint(tree) == legacy_fingerprint(tree)


def test_a_checkpoint_with_a_legacy_fingerprint_resumes(tmp_path):
    tree = _tree()
    _save_legacy(tmp_path, tree, legacy_fingerprint(tree))
    ck = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
    try:
        restored, meta, step = ck.restore_good(lambda meta: _abstract(tree))
    finally:
        ck.close()
    assert step == 474 and int(restored["train"].step) == 474
    np.testing.assert_array_equal(
        restored["train"].params["backbone"]["kernel"], np.arange(6.0).reshape(2, 3)
    )


def test_a_checkpoint_whose_legacy_fingerprint_differs_is_refused(tmp_path):
    tree = _tree()
    _save_legacy(
        tmp_path,
        tree,
        legacy_fingerprint({**tree, "ewc": {"anchor": {"kernel": jnp.zeros((2, 3))}}}),
    )
    ck = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
    try:
        with pytest.raises(ckpt_lib.CorruptCheckpointError, match="fingerprint"):
            ck.restore_good(lambda meta: _abstract(tree))
    finally:
        ck.close()
