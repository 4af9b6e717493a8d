"""Multi-host start-up: ``jax.distributed.initialize`` from the config or the environment.

On TPU VMs (and Slurm, Open MPI, ...) ``jax.distributed.initialize()`` with no arguments finds the
coordinator itself: set ``--config.distributed.initialize=True``. Elsewhere give the coordinator
explicitly (``distributed.coordinator_address='10.0.0.1:1234'``, ``num_processes``,
``process_id``), or set ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``.
Must run before any JAX computation. Each process then reads its own rows of every global batch,
and only process 0 writes metrics, the config and provenance; orbax coordinates checkpoints.
"""

from __future__ import annotations

import os

import jax

from nm_hebb_jax.errors import ConfigError

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize(config) -> bool:
    """Initialises ``jax.distributed`` when the config or environment asks for it.

    Returns:
      True if this call initialised the distributed runtime.
    """
    d = config.distributed
    from_env = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (d.initialize or d.coordinator_address or from_env):
        return False
    if jax.distributed.is_initialized():
        return False
    kwargs = {}
    if d.coordinator_address:
        if d.num_processes <= 0 or d.process_id < 0:
            raise ConfigError(
                "distributed.coordinator_address needs distributed.num_processes > 0 and "
                "distributed.process_id >= 0"
            )
        kwargs = dict(
            coordinator_address=d.coordinator_address,
            num_processes=int(d.num_processes),
            process_id=int(d.process_id),
        )
    elif from_env:
        kwargs = dict(
            coordinator_address=from_env,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    if d.timeout_s > 0:
        kwargs["initialization_timeout"] = int(d.timeout_s)
    jax.distributed.initialize(**kwargs)
    return True
