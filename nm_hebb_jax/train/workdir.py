"""A run's workdir: checked before the first write, held by one run at a time, and what a failed
write to it means.

:func:`hold` creates the workdir (a path that is a file, or a location that cannot be written, is a
one-line :class:`~nm_hebb_jax.errors.WorkdirError` before anything else is written) and takes its
lock: an exclusive ``fcntl.flock`` on ``.lock.process_<i>`` for each process ``i`` that writes
(process 0 writes the metrics, config and provenance; every process writes its shards of the
checkpoints, so each takes its own lock and a second job on the same workdir is refused by each
of its processes). The lock file names its holder (pid, host, start time) for the refusal's
message. The OS releases a flock when its process dies, so a run killed without clean-up leaves a
stale file whose lock the relaunch takes over (with a warning); a normal exit removes the file.
With several processes, all or none go on (an all-gather of one flag).

:func:`storage_error` recognises a failed write of the storage (no space left, quota, file size
limit, a read-only or failing file system) in an exception from any writer (orbax/tensorstore,
the metric writer) and turns it into a one-line :class:`~nm_hebb_jax.errors.StorageError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator

import jax
import numpy as np

from nm_hebb_jax.errors import StorageError, WorkdirError, warn

LOCK_FILE = ".lock.process_{index}"
#: The errno values of a storage that refuses writes: the run cannot go on until it is fixed.
#: Each with what to fix before relaunching.
STORAGE_ERRNOS = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space or raise the quota",
    errno.EFBIG: "raise the file size limit",
    errno.EROFS: "make the file system writable",
    errno.EIO: "check the disk",
}
# Filesystems without flock (some network mounts) answer with one of these.
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")


def prepare(workdir: str) -> str:
    """The absolute workdir, created if missing; a one-line WorkdirError when it cannot be."""
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(
            f"--workdir {path} is a file, not a directory: pass a directory (created if missing)"
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WorkdirError(
            f"cannot create workdir {path} ({e.strerror}): pass a --workdir in a writable location"
        ) from None
    return path


class WorkdirLock:
    """The exclusive lock of one process on a workdir (see the module docstring).

    Args:
      workdir: an existing directory.
      process_index: the process that takes it (each writing process has its own).
    """

    def __init__(self, workdir: str, process_index: int = 0):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE.format(index=process_index))
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises a one-line WorkdirError naming its holder."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise WorkdirError(
                    f"workdir {self.workdir} is not writable ({e.strerror}): pass a writable "
                    "--workdir (copy the run there to resume it)"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise WorkdirError(
                    f"workdir {self.workdir} is in use by another run ({_describe(holder)}): "
                    "wait for it to end or stop it, or pass another --workdir"
                ) from None
            except OSError as e:
                if e.errno not in _NO_LOCKING:
                    os.close(fd)
                    raise
                warn(
                    f"cannot lock workdir {self.workdir} on this file system ({e.strerror}): "
                    "make sure no other run writes to it"
                )
            # A holder that releases removes the file: if the file we locked is no longer the
            # one at the path, another run may lock a new one, so start again.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        stale = _read_holder(fd)
        if stale:
            warn(
                f"workdir {self.workdir} was locked by a run that ended without releasing it "
                f"({_describe(stale)}; killed or crashed): taking it over"
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Removes the lock file, then releases the lock (closing the file)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        holder = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"damaged": True}
    return holder if isinstance(holder, dict) else {"damaged": True}


def _describe(holder: dict) -> str:
    if not holder or holder.get("damaged"):
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[str]:
    """Prepares ``workdir`` and holds this process's lock on it; yields the absolute path.

    With several processes each takes its own lock and all go on only if all got theirs.

    Raises:
      WorkdirError: a file, not writable, or in use by another run (one line).
    """
    path = prepare(workdir)
    lock = WorkdirLock(path, jax.process_index())
    failure = None
    try:
        lock.acquire()
    except WorkdirError as e:
        failure = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = multihost_utils.process_allgather(np.int32(failure is None))
        if failure is None and not np.all(ok):
            lock.release()
            bad = [int(i) for i in np.flatnonzero(np.asarray(ok) == 0)]
            failure = WorkdirError(
                f"workdir {path} is in use by another run (process(es) {bad} of this job could "
                "not take their lock): wait for it to end or stop it, or pass another --workdir"
            )
    if failure is not None:
        raise failure
    try:
        yield path
    finally:
        lock.release()


def _errno_of(error: BaseException) -> int | None:
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    match = _OS_ERROR_CODE.search(str(error))  # tensorstore's ValueError: [os_error_code='28']
    return int(match.group(1) or match.group(2)) if match else None


def storage_error(error: BaseException, workdir: str, last_step: int | None) -> StorageError | None:
    """A one-line StorageError if ``error`` (or one it came from) is a storage failure, else None.

    Args:
      error: the exception that ended the run.
      workdir: the run's directory (named in the message).
      last_step: the step of the newest checkpoint saved (None: none yet).
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = _errno_of(error)
        if code in STORAGE_ERRNOS:
            resume = (
                f"it resumes from the checkpoint at step {last_step}"
                if last_step is not None
                else "no checkpoint was saved yet, so it starts again"
            )
            failure = StorageError(
                f"writing workdir {workdir} failed: {os.strerror(code)}; "
                f"{STORAGE_ERRNOS[code]} and relaunch the same command: {resume}"
            )
            failure.errno = code
            return failure
        error = error.__cause__ or error.__context__
    return None
