"""Test hooks of the ``debug`` config group, installed around the train step, not in the loop.

``debug.nan_at_step`` feeds a NaN batch, ``debug.kill_at_step`` SIGKILLs the process (no clean-up)
and ``debug.sigterm_at_step`` sends it a real SIGTERM (through :mod:`~nm_hebb_jax.train.preemption`)
at that global step. The reliability tests set them through ``main.py``'s flags; a run with all of
them at ``-1`` (the default) runs the loop's own step functions, untouched.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import numpy as np

StepFor = Callable[[int], Callable]


def with_debug_hooks(step_for: StepFor, debug) -> StepFor:
    """``step_for`` (global step -> compiled step) with the hooks of ``debug`` at their steps."""
    nan, kill, term = debug.nan_at_step, debug.kill_at_step, debug.sigterm_at_step
    if max(nan, kill, term) < 0:
        return step_for

    def hooked_step_for(step: int):
        step_fn = step_for(step)
        if step not in (nan, kill, term):
            return step_fn

        def hooked(state, ewc, batch):
            if step == nan:
                batch = {**batch, "image": batch["image"] * np.float32("nan")}
            out = step_fn(state, ewc, batch)
            if step == kill:  # die without any clean-up, as a lost machine does
                os.kill(os.getpid(), signal.SIGKILL)
            if step == term:  # a real SIGTERM, through the run's handler
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return hooked

    return hooked_step_for
