"""Stopping on request: SIGTERM (what a preempted TPU VM receives) and SIGINT (Ctrl-C) become
"save a checkpoint and stop".

The loop asks :meth:`StopSignal.requested` after every step; when it is true the loop saves the
current step and raises :class:`~nm_hebb_jax.errors.Preempted`, which ``main.py`` turns into a
message and exit status 0 (SIGTERM) or 130 (SIGINT): relaunching the same command resumes. A
second Ctrl-C stops at once without saving (the default ``KeyboardInterrupt``).
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np

from nm_hebb_jax.errors import EXIT_INTERRUPTED, Preempted

__all__ = ["Preempted", "StopSignal"]


class StopSignal:
    """Turns SIGTERM and SIGINT into a request to save and stop, while used as a context manager.

    Installs the handlers only in the main thread and restores the previous ones on exit. With
    several processes, :meth:`requested` combines the flags of all processes (an all-gather of one
    int per step), so all stop at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        del frame
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            if self.received == name:  # the second Ctrl-C: stop now, without saving
                raise KeyboardInterrupt
            # The step (or an EWC Fisher refresh) in flight finishes first, which can take a
            # while: say that the request was heard.
            os.write(
                2,
                b"received SIGINT: saving a checkpoint after the current step "
                b"(Ctrl-C again to stop at once without saving)\n",
            )
        if self.received is None or signum == signal.SIGINT:
            self.received = name

    @property
    def exit_code(self) -> int:
        """The exit status of a stop on this request: 130 for Ctrl-C, else 0."""
        return EXIT_INTERRUPTED if self.received == "SIGINT" else 0

    def requested(self) -> bool:
        """Whether any process received a stop signal."""
        flag = self.received is not None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
            if flag and self.received is None:
                self.received = "SIGTERM (another process)"
        return flag
