"""The workdir (nm_hebb_jax/train/workdir.py): one-line errors for a file or a location that cannot
be written, one writer at a time (the lock, its holder in the message, a stale lock taken over,
the release race), and what counts as a failed write of the storage."""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from nm_hebb_jax.errors import StorageError, WorkdirError
from nm_hebb_jax.train import workdir as W
from tests.util import ROOT

HOLD = """
import sys, time
from nm_hebb_jax.train.workdir import WorkdirLock
lock = WorkdirLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(workdir):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(WorkdirError) as e:
            W.WorkdirLock(str(tmp_path)).acquire()
        message = str(e.value)
        assert f"workdir {tmp_path} is in use by another run (pid {proc.pid} on " in message
        assert "wait for it to end or stop it, or pass another --workdir" in message
        assert "\n" not in message
    finally:
        proc.send_signal(signal.SIGKILL)  # dies holding it: no clean-up, the file stays
        proc.wait()
    assert os.path.exists(tmp_path / ".lock.process_0")
    lock = W.WorkdirLock(str(tmp_path))
    with pytest.warns(RuntimeWarning, match=rf"ended without releasing it \(pid {proc.pid} on"):
        lock.acquire()
    lock.release()
    assert not os.path.exists(tmp_path / ".lock.process_0")  # a normal exit leaves nothing


def test_each_process_has_its_own_lock(tmp_path):
    first, second = W.WorkdirLock(str(tmp_path), 0), W.WorkdirLock(str(tmp_path), 1)
    first.acquire()
    second.acquire()
    with pytest.raises(WorkdirError, match="in use by another run"):
        W.WorkdirLock(str(tmp_path), 1).acquire()
    first.release()
    second.release()
    assert not os.listdir(tmp_path)


def test_a_lock_file_removed_by_its_releasing_holder_is_not_trusted(tmp_path):
    """The release race: B opened the lock file before A removed and released it; B's flock then
    succeeds on a file no longer at the path, while C locks the new one. acquire() checks that
    the file it locked is the one at the path, and starts again otherwise."""
    a = W.WorkdirLock(str(tmp_path))
    a.acquire()
    stale_fd = os.open(a.path, os.O_RDWR)
    a.release()
    fcntl.flock(stale_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # B: "got" the lock of a removed file
    assert not W._same_file(stale_fd, a.path)
    c = W.WorkdirLock(str(tmp_path))
    c.acquire()  # C: a new file at the path, locked
    assert W._same_file(c._fd, c.path)
    with pytest.raises(WorkdirError):  # and B, starting again, finds C's lock
        W.WorkdirLock(str(tmp_path)).acquire()
    os.close(stale_fd)
    c.release()


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(W.fcntl, "flock", no_locks)
    lock = W.WorkdirLock(str(tmp_path))
    with pytest.warns(RuntimeWarning, match="cannot lock workdir .* make sure no other run"):
        lock.acquire()
    lock.release()


def test_a_file_or_an_unwritable_location_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(WorkdirError, match=r"is a file, not a directory: pass a directory"):
        W.prepare(str(path))
    with pytest.raises(WorkdirError, match=r"cannot create workdir .*\(Not a directory\)"):
        W.prepare(str(path / "sub"))
    real_open = os.open

    def read_only(name, flags, *args):
        if str(name).endswith(".lock.process_0"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)
        return real_open(name, flags, *args)

    monkeypatch.setattr(W.os, "open", read_only)
    with pytest.raises(WorkdirError) as e, W.hold(str(tmp_path / "run")):
        pass
    assert str(e.value) == (
        f"workdir {tmp_path / 'run'} is not writable (Read-only file system): pass a writable "
        "--workdir (copy the run there to resume it)"
    )


def test_hold_yields_the_path_and_releases_on_error(tmp_path):
    with pytest.raises(KeyError), W.hold(str(tmp_path / "run")) as path:
        assert path == str(tmp_path / "run")
        assert os.path.exists(tmp_path / "run" / ".lock.process_0")
        raise KeyError("boom")
    assert os.listdir(tmp_path / "run") == []


def _chain(*errors):
    for outer, inner in zip(errors, errors[1:], strict=False):
        outer.__context__ = inner
    return errors[0]


@pytest.mark.parametrize(
    "error,expected",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device; free space"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
        (OSError(errno.EROFS, "Read-only file system"), "make the file system writable"),
        # how tensorstore (orbax) reports it: a ValueError with the OS error code in the text
        (
            ValueError(
                'RESOURCE_EXHAUSTED: Error writing local file "/w/x": Failed to write 181 bytes '
                "to file 17: No space left on device [os_error_code='28'] [tensorstore_spec=...]"
            ),
            "No space left on device",
        ),
        (_chain(RuntimeError("save failed"), OSError(errno.ENOSPC, "full")), "No space left"),
        (OSError(errno.ENOENT, "No such file"), None),
        (ValueError("shapes do not match"), None),
    ],
)
def test_storage_failures_are_recognised_in_any_writer(error, expected):
    got = W.storage_error(error, "/w", last_step=10)
    if expected is None:
        assert got is None
        return
    assert isinstance(got, StorageError) and got.exit_code == 4
    assert expected in str(got) and "\n" not in str(got)
    assert str(got).startswith("writing workdir /w failed: ")
    assert str(got).endswith("relaunch the same command: it resumes from the checkpoint at step 10")
    none_yet = W.storage_error(error, "/w", last_step=None)
    assert str(none_yet).endswith("no checkpoint was saved yet, so it starts again")


def test_lock_holder_record_names_pid_host_and_time(tmp_path):
    lock = W.WorkdirLock(str(tmp_path))
    lock.acquire()
    try:
        holder = W._read_holder(lock._fd)
        assert holder["pid"] == os.getpid() and holder["host"]
        assert time.strptime(holder["since"][:19], "%Y-%m-%dT%H:%M:%S")
    finally:
        lock.release()
