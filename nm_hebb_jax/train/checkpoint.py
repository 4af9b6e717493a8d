"""Checkpointing: the one module that talks to orbax.

Two ``orbax.checkpoint.CheckpointManager`` s per workdir: ``checkpoints/`` (every N steps and at
each phase end, keep K) and ``best/`` (the best validation Top-1, keep 1). Each checkpoint has two
items:
``state`` (``{'train': TrainState, 'ewc': {'anchor', 'fisher'}}``, restored against an abstract,
sharded target) and ``meta`` (JSON: phase, step, model, method, dataset, metrics).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging as std_logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any


class _ReadOnlyNoticeFilter(std_logging.Filter):
    """Drops orbax's "Given directory is read only" notice, which every read-only manager logs.

    Matched by its exact format string and orbax's own source file, so no other record (and no
    other orbax warning) is hidden.
    """

    _MESSAGE = "Given directory is read only=%s"
    _SOURCE = os.path.join("orbax", "checkpoint", "checkpoint_manager.py")

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (record.msg == self._MESSAGE and record.pathname.endswith(self._SOURCE))


@contextlib.contextmanager
def _quiet_read_only_notice():
    """Silences :class:`_ReadOnlyNoticeFilter`'s notice on absl's logger while managers open."""
    logger = std_logging.getLogger("absl")
    notice = _ReadOnlyNoticeFilter()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _handlers() -> dict:
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


class Checkpointer:
    """Latest-K and best-1 checkpoints of one workdir.

    Args:
      workdir: the run directory.
      keep: how many regular checkpoints to keep.
      read_only: open existing checkpoints only (evaluation); never creates directories.
    """

    def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False):
        self.workdir = os.path.abspath(os.path.expanduser(workdir))
        opts = dict(
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,  # leftovers of a save killed midway
            # Read-only: the values orbax would otherwise force (and warn about) itself.
            save_interval_steps=0 if read_only else 1,
        )
        quiet = _quiet_read_only_notice() if read_only else contextlib.nullcontext()
        with quiet:
            self.latest = ocp.CheckpointManager(
                os.path.join(self.workdir, "checkpoints"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=None if read_only else keep, **opts
                ),
                item_handlers=_handlers(),
            )
            best_dir = os.path.join(self.workdir, "best")
            self.best = None
            if not read_only or os.path.isdir(best_dir):
                self.best = ocp.CheckpointManager(
                    best_dir,
                    options=ocp.CheckpointManagerOptions(
                        max_to_keep=None if read_only else 1, **opts
                    ),
                    item_handlers=_handlers(),
                )

    def latest_step(self) -> int | None:
        """The newest regular checkpoint's step, or None."""
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        """The best checkpoint's step, or None."""
        return self.best.latest_step() if self.best is not None else None

    def save(self, step: int, tree: PyTree, meta: dict, *, best: bool = False) -> None:
        """Saves ``tree`` and ``meta`` at ``step`` (blocking); to ``best/`` when ``best``.

        ``meta['fingerprint']`` gets a SHA-256 of the tree's bytes, checked on restore, so a
        damaged checkpoint that still parses is never restored silently.
        """
        meta = {**meta, "fingerprint": fingerprint(tree)}
        mngr = self.best if best else self.latest
        if step in mngr.all_steps():  # e.g. a phase that ends where a periodic save just happened
            mngr.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
        mngr.save(step, args=args, force=True)
        mngr.wait_until_finished()

    def _resolve(self, step: int | None, best: bool):
        """``(manager, step)``: the latest step when ``step`` is None; FileNotFoundError if none."""
        mngr = self.best if best else self.latest
        if mngr is None:
            raise FileNotFoundError(f"no best checkpoint in {self.workdir}")
        steps = list(mngr.all_steps())
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.workdir}")
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {self.workdir} (have {steps})"
            )
        return mngr, step

    def _restore(self, mngr, step: int, target: PyTree):
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
        )
        out = mngr.restore(step, args=args)
        return out.state, out.meta

    def read_meta(self, step: int | None = None, *, best: bool = False) -> dict | None:
        """The JSON metadata of a checkpoint (latest by default), or None when there is none."""
        try:
            mngr, step = self._resolve(step, best)
        except FileNotFoundError:
            return None
        return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, abstract_tree: PyTree, step: int | None = None, *, best: bool = False):
        """Restores ``(tree, meta)`` into the structure/shardings of ``abstract_tree``."""
        mngr, step = self._resolve(step, best)
        return self._restore(mngr, step, abstract_tree)

    def restore_raw(self, step: int | None = None, *, best: bool = False, sharding=None):
        """Restores ``(tree, meta)`` as nested dicts, using the checkpoint's own structure."""
        mngr, step = self._resolve(step, best)
        tree_md = mngr.item_metadata(step)["state"]
        tree_md = getattr(tree_md, "tree", tree_md)
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree_md
        )
        return self._restore(mngr, step, target)

    def restore_latest_good(
        self, make_abstract: Callable[[dict], PyTree], check_meta: Callable[[dict], None]
    ):
        """Restores the newest readable, intact regular checkpoint, falling back step by step.

        Args:
          make_abstract: ``meta -> abstract tree`` (the target depends on the checkpoint's phase).
          check_meta: called on each candidate's meta before its state is read; its exceptions
            (e.g. "checkpoint of another model") propagate, they are not treated as damage.

        Returns:
          ``(tree, meta, step)``, or ``None`` when the workdir has no checkpoint.

        Raises:
          CorruptCheckpointError: checkpoints exist but none can be restored.
        """
        steps = sorted(self.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - any read failure means a damaged checkpoint
                failures.append(self._warn_bad(step, e))
                continue
            check_meta(meta)
            try:
                tree, meta = self.restore(make_abstract(meta), step)
                if "fingerprint" in meta and fingerprint(tree) != meta["fingerprint"]:
                    raise CorruptCheckpointError("content does not match its fingerprint")
            except Exception as e:  # noqa: BLE001
                failures.append(self._warn_bad(step, e))
                continue
            return tree, meta, step
        if failures:
            raise CorruptCheckpointError(
                f"no readable checkpoint in {self.latest.directory} (steps {steps} are damaged); "
                "move the workdir aside and start a new run"
            )
        return None

    def _warn_bad(self, step: int, error: Exception) -> str:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        msg = (
            f"checkpoint step {step} in {self.latest.directory} is damaged or unreadable "
            f"({type(error).__name__}: {first}); falling back to the previous checkpoint"
        )
        logging.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return msg

    def all_steps(self) -> list[int]:
        """Steps of the regular checkpoints."""
        return list(self.latest.all_steps())

    def close(self) -> None:
        """Waits for pending writes and closes the managers."""
        for m in (self.latest, self.best):
            if m is not None:
                m.wait_until_finished()
                m.close()


class CorruptCheckpointError(RuntimeError):
    """No checkpoint of a workdir could be restored intact."""


def fingerprint(tree: PyTree) -> str:
    """SHA-256 over the bytes, shapes and dtypes of a pytree's leaves (process-local copy)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)  # replicated state: every copy is the same
        arr = np.asarray(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def restore_params_only(
    workdir: str, *, sharding, step: int | None = None, best: bool = False
) -> tuple[PyTree, PyTree, dict]:
    """``(params, batch_stats, meta)`` of a checkpoint, whatever optimiser state it holds.

    Used by ``config.init_from`` and by evaluation. ``workdir`` may be a run directory or its
    ``checkpoints``/``best`` subdirectory.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if os.path.basename(workdir.rstrip("/")) in ("checkpoints", "best"):
        best = best or os.path.basename(workdir.rstrip("/")) == "best"
        workdir = os.path.dirname(workdir.rstrip("/"))
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        tree, meta = ckpt.restore_raw(step, best=best, sharding=sharding)
    finally:
        ckpt.close()
    return tree["train"]["params"], tree["train"]["batch_stats"], meta


def tree_signature(tree: PyTree) -> dict[str, list]:
    """``{path: shape}`` of a pytree: used to compare a checkpoint against the model."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): list(getattr(x, "shape", ())) for p, x in flat}
