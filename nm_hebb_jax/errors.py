"""The project's own error types: what the command-line entry points report as one line.

A :class:`UsageError` is a mistake in the input (a config value, a data file, a workdir) whose
message is one line naming the problem and the fix; ``main.py`` and ``python -m
nm_hebb_jax.evaluate`` print it and exit with status 2. Any other exception is a bug and keeps its
traceback. The subclasses also derive from ``ValueError``, which callers caught before these types
existed.
"""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in the input, reported as one line (base of the project's input errors)."""


class ConfigError(UsageError, ValueError):
    """A config argument or value that is not accepted."""


class RunError(UsageError, ValueError):
    """A problem with a run's input, reported before anything is compiled or written."""


class DataError(UsageError, ValueError):
    """A problem with the data or the data config."""


class LoadError(UsageError, ValueError):
    """A workdir or checkpoint that cannot be loaded."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or directory the input names does not exist."""


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient (the last good checkpoint is kept)."""


class Preempted(Exception):
    """The run stopped early on request after saving a checkpoint (relaunch to continue)."""
