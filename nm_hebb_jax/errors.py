"""The project's own error and warning types: what the command-line entry points report as one line.

A :class:`UsageError` is a mistake in the input (a config value, a data file, a workdir) whose
message is one line naming the problem and the fix. The other :class:`ReportedError` s are events
of a run that a user acts on (a non-finite loss, a full disk, a stop on request). ``main.py`` and
``python -m nm_hebb_jax.evaluate`` print any of them as one line and exit with its
:attr:`~ReportedError.exit_code` (:mod:`nm_hebb_jax.cli`); any other exception is a bug and keeps
its traceback. The input errors also derive from ``ValueError``, which callers caught before these
types existed.

Exit codes: 0 finished, or stopped by SIGTERM after saving (relaunch to resume); 1 a bug (a
traceback); 2 a mistake in the input; 3 a non-finite loss; 4 the workdir's storage failed (full
disk, quota, read-only or I/O error; relaunch after fixing it to resume); 130 stopped by Ctrl-C
(SIGINT).

:func:`warn` issues the one-line warnings of the same boundary (a damaged checkpoint skipped, a
picture not written): a :class:`RunWarning`, which the CLIs print as ``warning: <message>``.
"""

from __future__ import annotations

import warnings

EXIT_USAGE = 2
EXIT_NONFINITE = 3
EXIT_STORAGE = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class ReportedError(Exception):
    """An error the CLIs report as ``<prefix>: <message>`` and exit with :attr:`exit_code`."""

    exit_code: int = 1
    prefix: str = "error"


class UsageError(ReportedError):
    """A mistake in the input, reported as one line (base of the project's input errors)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError, ValueError):
    """A config argument or value that is not accepted."""


class RunError(UsageError, ValueError):
    """A problem with a run's input, reported before anything is compiled or written."""


class DataError(UsageError, ValueError):
    """A problem with the data or the data config."""


class LoadError(UsageError, ValueError):
    """A workdir or checkpoint that cannot be loaded."""


class CorruptCheckpointError(LoadError):
    """A checkpoint (or every checkpoint of a workdir) is damaged: unreadable, or its content
    does not match the digest saved with it."""


class WorkdirError(UsageError, ValueError):
    """A workdir that cannot be used: a file, not writable, or held by another run."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or directory the input names does not exist."""


class NonFiniteError(ReportedError, FloatingPointError):
    """Training produced a non-finite loss or gradient (the last good checkpoint is kept)."""

    exit_code = EXIT_NONFINITE


class StorageError(ReportedError, OSError):
    """Writing the workdir failed (no space left, quota, a read-only or failing file system).

    The checkpoints already saved are intact and the partial one is removed; relaunching the same
    command once the storage is fixed resumes the run.
    """

    exit_code = EXIT_STORAGE


class Preempted(ReportedError):
    """The run stopped early on request after saving a checkpoint (relaunch to continue).

    Exit status 0 for SIGTERM (a preempted machine: schedulers relaunch it), 130 for SIGINT
    (Ctrl-C: a script running ``main.py && evaluate`` must not go on).
    """

    prefix = "stopped"

    def __init__(self, message: str, *, exit_code: int = 0):
        super().__init__(message)
        self.exit_code = exit_code


class RunWarning(RuntimeWarning):
    """A one-line warning for the user (printed as ``warning: <message>`` by the CLIs)."""


def warn(message: str) -> None:
    """Issues ``message`` as a :class:`RunWarning` (one line; the CLIs print it once)."""
    warnings.warn(RunWarning(" ".join(message.split())), stacklevel=2)
