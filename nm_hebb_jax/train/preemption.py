"""Preemption: SIGTERM (what a preempted TPU VM receives) becomes "save a checkpoint and stop".

The loop asks :meth:`StopSignal.requested` after every step; when it is true the loop saves the
current step and raises :class:`~nm_hebb_jax.errors.Preempted`, which ``main.py`` turns into exit
status 0 and a message: relaunching the same command resumes.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

from nm_hebb_jax.errors import Preempted

__all__ = ["Preempted", "StopSignal"]


class StopSignal:
    """Turns SIGTERM into a request to save and stop, while used as a context manager.

    Installs the handler only in the main thread and restores the previous one on exit. With
    several processes, :meth:`requested` combines the flags of all processes (an all-gather of one
    int per step), so all stop at the same step.
    """

    SIGNALS = (signal.SIGTERM,)

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
        self.received = signal.Signals(signum).name

    def requested(self) -> bool:
        """Whether any process received a stop signal."""
        flag = self.received is not None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
            if flag and self.received is None:
                self.received = "SIGTERM (another process)"
        return flag
