"""Device mesh and shardings: the one module that decides how arrays are placed.

Data parallelism over a 1-D ``('data',)`` mesh of all devices (all hosts): the train state is
replicated, batches are sharded along their leading axis. Axis type Auto (STYLE.md: the Explicit
default of ``jax.make_mesh`` recompiles a simple train step). BatchNorm needs no ``axis_name``:
under ``jax.jit`` the batch statistics are computed over the global batch.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

PyTree = Any
DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D ``('data',)`` mesh over ``devices`` (default: every device of every process)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the ``'data'`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises a one-line ValueError unless the global batch divides over devices and processes."""
    n = mesh.devices.size
    if batch_size % n or batch_size % jax.process_count():
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {n} devices "
            f"({jax.process_count()} processes); set --config.batch_size to a multiple of {n}"
        )


def global_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
    """Assembles this process's rows into global, data-sharded arrays.

    Args:
      local_batch: pytree of host arrays ``[B_local, ...]`` (this process's rows of the batch).
      mesh: the data mesh.

    Returns:
      Pytree of ``jax.Array`` of shape ``[B_local * process_count, ...]`` sharded over ``'data'``.
    """
    sharding = data_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def abstract_with_sharding(tree: PyTree, sharding) -> PyTree:
    """``ShapeDtypeStruct`` pytree carrying ``sharding`` (orbax restore targets, jit outputs)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
