"""Checkpointing: the one module that talks to orbax.

Two ``orbax.checkpoint.CheckpointManager`` s per workdir: ``checkpoints/`` (every N steps and at
each phase end, keep K) and ``best/`` (the best validation Top-1, keep 1). Each checkpoint has two
items:
``state`` (``{'train': TrainState, 'ewc': {'anchor', 'fisher'}}``, restored against an abstract,
sharded target) and ``meta`` (JSON: phase, step, model, method, dataset, metrics, config).

Every save records a SHA-256 of the state (:func:`state_digest`: leaves in the order of their path
names, so a restore into the trainer's types and one into plain dicts give the same digest), and
:meth:`Checkpointer.restore_good` is the one way a checkpoint is read back, by training (resume,
``init_from``) and evaluation alike: it checks the digest, and without a given step falls back
from a damaged checkpoint to the previous intact one with a one-line warning.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging as std_logging
import os
import shutil
import textwrap
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from nm_hebb_jax.errors import CorruptCheckpointError, warn

PyTree = Any

#: The meta key of :func:`state_digest` (checkpoints written before it carry only the
#: ``fingerprint`` of :func:`fingerprint`, checked when restored into the trainer's types).
DIGEST_KEY = "state_sha256"
#: How orbax names a checkpoint whose save has not finished (removed by :meth:`discard_partial`).
PARTIAL_GLOB = "*.orbax-checkpoint-tmp*"


class _ReadOnlyNoticeFilter(std_logging.Filter):
    """Drops orbax's "Given directory is read only" notice, which every read-only manager logs.

    Matched by its exact format string and orbax's own source file, so no other record (and no
    other orbax warning) is hidden.
    """

    _MESSAGE = "Given directory is read only=%s"
    _SOURCE = os.path.join("orbax", "checkpoint", "checkpoint_manager.py")

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (record.msg == self._MESSAGE and record.pathname.endswith(self._SOURCE))


class _ThreadFailureFilter(std_logging.Filter):
    """Drops orbax's log of an exception in one of its save threads: the same exception is raised
    to the caller of ``save``, which reports it (as one line when it is a full disk)."""

    _MESSAGE = "_SignalingThread.run() raised an exception"
    _SOURCE = os.path.join("orbax", "checkpoint", "_src", "futures", "future.py")

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (self._MESSAGE in str(record.msg) and record.pathname.endswith(self._SOURCE))


@contextlib.contextmanager
def _without(record_filter: std_logging.Filter):
    """Applies ``record_filter`` to absl's logger (which orbax logs through) in the block."""
    logger = std_logging.getLogger("absl")
    logger.addFilter(record_filter)
    try:
        yield
    finally:
        logger.removeFilter(record_filter)


def _quiet_read_only_notice():
    """Silences :class:`_ReadOnlyNoticeFilter`'s notice on absl's logger while managers open."""
    return _without(_ReadOnlyNoticeFilter())


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

        ``meta['state_sha256']`` gets :func:`state_digest` of the tree, checked on restore, so a
        damaged checkpoint that still parses is never restored silently.
        """
        meta = {**meta, DIGEST_KEY: state_digest(tree)}
        mngr = self.best if best else self.latest
        if step in mngr.all_steps():  # e.g. a phase that ends where a periodic save just happened
            mngr.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
        with _without(_ThreadFailureFilter()):
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
        """Restores ``(tree, meta)`` as nested dicts, using the checkpoint's own structure.

        Not verified: :meth:`restore_good` (``make_abstract=None``) is the checked read.
        """
        mngr, step = self._resolve(step, best)
        return self._restore(mngr, step, self._raw_target(mngr, step, sharding))

    @staticmethod
    def _raw_target(mngr, step: int, sharding):
        tree_md = mngr.item_metadata(step)["state"]
        tree_md = getattr(tree_md, "tree", tree_md)
        return jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree_md
        )

    def restore_good(
        self,
        make_abstract: Callable[[dict], PyTree] | None = None,
        check_meta: Callable[[dict], None] | None = None,
        *,
        step: int | None = None,
        best: bool = False,
        sharding=None,
    ):
        """Restores a checkpoint whose content matches its digest: the one way checkpoints are read.

        Without ``step``, the newest intact checkpoint: a damaged one (unreadable, or its content
        differs from the digest saved with it) is skipped with a one-line warning, falling back
        step by step. With ``step``, that checkpoint or an error.

        Args:
          make_abstract: ``meta -> abstract tree`` (the trainer's types; the target depends on the
            checkpoint's phase); None restores the checkpoint's own structure as nested dicts.
          check_meta: called on each candidate's meta before its state is read; its exceptions
            (e.g. "checkpoint of another model") propagate, they are not treated as damage.
          step: the checkpoint's step (default: the newest intact one).
          best: read ``best/`` instead of ``checkpoints/``.
          sharding: where a nested-dict restore puts the arrays (``make_abstract`` None).

        Returns:
          ``(tree, meta, step)``, or ``None`` when there is no checkpoint (and no ``step``).

        Raises:
          FileNotFoundError: ``step`` is not a checkpoint of the workdir, or there is no ``best/``.
          CorruptCheckpointError: the checkpoint at ``step`` is damaged, or (without ``step``)
            checkpoints exist but none is intact (one line).
        """
        if step is not None:
            mngr, step = self._resolve(step, best)
            candidates = [step]
        else:
            mngr = self.best if best else self.latest
            candidates = sorted(mngr.all_steps(), reverse=True) if mngr is not None else []
        directory = os.path.join(self.workdir, "best" if best else "checkpoints")
        damaged = []
        for s in candidates:
            try:
                meta = mngr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            except Exception as e:  # noqa: BLE001 - any read failure means a damaged checkpoint
                damaged.append((s, _reason(e)))
            else:
                if check_meta is not None:
                    check_meta(meta)
                try:
                    if make_abstract is None:
                        target = self._raw_target(mngr, s, sharding)
                    else:
                        target = make_abstract(meta)
                    tree, meta = self._restore(mngr, s, target)
                    _verify(tree, meta, typed=make_abstract is not None)
                except Exception as e:  # noqa: BLE001
                    damaged.append((s, _reason(e)))
                else:
                    return tree, meta, s
            if step is None and len(damaged) < len(candidates):
                s, reason = damaged[-1]
                warn(
                    f"checkpoint step {s} in {directory} is damaged or unreadable ({reason}); "
                    "falling back to the previous checkpoint"
                )
        if step is not None:
            others = sorted(s for s in mngr.all_steps() if s != step)
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {directory} is damaged or unreadable "
                f"({damaged[0][1]}); other steps: {others}"
            )
        if damaged:
            raise CorruptCheckpointError(
                f"no readable checkpoint in {directory} (steps {[s for s, _ in damaged]} are "
                f"damaged; newest: {damaged[0][1]})"
            )
        return None

    def discard_partial(self) -> list[str]:
        """Removes the checkpoints whose save did not finish (after a failed run); returns them.

        Only process 0 removes them (orbax's primary host owns the temporary directories).
        """
        if jax.process_index() != 0:
            return []
        found = []
        for sub in ("checkpoints", "best"):
            for path in glob.glob(os.path.join(self.workdir, sub, PARTIAL_GLOB)):
                shutil.rmtree(path, ignore_errors=True)
                found.append(path)
        return found

    def all_steps(self) -> list[int]:
        """Steps of the regular checkpoints."""
        return list(self.latest.all_steps())

    def close(self) -> None:
        """Waits for pending writes and closes the managers."""
        for m in (self.latest, self.best):
            if m is not None:
                m.wait_until_finished()
                m.close()


def _reason(error: BaseException) -> str:
    """``Type: first line`` of an error, shortened at a word boundary (never mid-word)."""
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return textwrap.shorten(text, width=240, placeholder=" ...")


def _verify(tree: PyTree, meta: dict, *, typed: bool) -> None:
    """Raises CorruptCheckpointError when the restored tree differs from its saved digest."""
    if DIGEST_KEY in meta:
        if state_digest(tree) != meta[DIGEST_KEY]:
            raise CorruptCheckpointError("content does not match its digest")
    elif "fingerprint" in meta and typed:  # written before state_digest existed
        if fingerprint(tree) != meta["fingerprint"]:
            raise CorruptCheckpointError("content does not match its fingerprint")


def _host_copy(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)  # replicated state: every copy is the same
    # A 0-d leaf comes back 1-d (np.ascontiguousarray): state_digest hashes the step's shape as
    # (1,), and the digests on disk depend on it, so this stays.
    return np.ascontiguousarray(np.asarray(leaf))


def _path_names(path) -> tuple[str, ...]:
    """A key path as plain names: dict keys, attribute names and indices alike."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return tuple(names)


def state_digest(tree: PyTree) -> str:
    """SHA-256 over a pytree's leaves (path names, shape, dtype, bytes) in path-name order.

    Independent of the container types (a ``TrainState`` field and a dict key of the same name
    hash alike), so a checkpoint restored into the trainer's types or into plain dicts (evaluation)
    is checked against the same digest. Process-local copy of replicated arrays.
    """
    flat = [(_path_names(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
    h = hashlib.sha256()
    for names, leaf in sorted(flat, key=lambda item: item[0]):
        arr = _host_copy(leaf)
        h.update(json.dumps(names).encode())
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def fingerprint(tree: PyTree) -> str:
    """SHA-256 over the bytes, shapes and dtypes of a pytree's leaves in tree order (the digest of
    checkpoints written before :func:`state_digest`; kept to verify them on resume)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        # np.asarray, not _host_copy: np.ascontiguousarray makes a 0-d leaf (the step) 1-d, and the
        # digests already written hash its shape as ().
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
    ``checkpoints``/``best`` subdirectory. Read by :meth:`Checkpointer.restore_good`: verified,
    and without ``step`` the newest intact checkpoint.

    Raises:
      FileNotFoundError: no checkpoint (at ``step``).
      CorruptCheckpointError: the checkpoint at ``step``, or every checkpoint, is damaged.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if os.path.basename(workdir.rstrip("/")) in ("checkpoints", "best"):
        best = best or os.path.basename(workdir.rstrip("/")) == "best"
        workdir = os.path.dirname(workdir.rstrip("/"))
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        restored = ckpt.restore_good(step=step, best=best, sharding=sharding)
    finally:
        ckpt.close()
    if restored is None:
        where = "best checkpoint" if best else "checkpoint"
        raise FileNotFoundError(f"no {where} in {workdir}")
    tree, meta, _ = restored
    return tree["train"]["params"], tree["train"]["batch_stats"], meta


def tree_signature(tree: PyTree) -> dict[str, list]:
    """``{path: shape}`` of a pytree: used to compare a checkpoint against the model."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): list(getattr(x, "shape", ())) for p, x in flat}
