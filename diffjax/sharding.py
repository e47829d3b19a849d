"""Data parallelism on a 1-D device mesh: the same code on 1 CPU, 1 GPU, many devices or hosts.

    mesh = data_mesh()                        # all of jax.devices() along the "data" axis
    state = replicate(state, mesh)            # parameters: a full copy on every device
    images, labels = shard_batch((x, y), mesh)   # batches: split along the leading axis

A jitted step whose inputs are placed like this computes the global-batch result; XLA inserts the
gradient all-reduce. With several processes (hosts), each passes its own rows of the global batch
to :func:`shard_batch`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


# Read by initialize_distributed where the arguments are not given (JAX itself reads only the
# coordinator's address from the environment).
PROCESS_ENV = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def initialize_distributed(enabled: bool, **kwargs) -> None:
    """Call ``jax.distributed.initialize(**kwargs)`` when ``enabled`` (multi-host runs).

    Must run before any other JAX call. On TPU pods, Slurm and Open MPI the coordinator is
    found automatically; elsewhere pass ``coordinator_address``, ``num_processes`` and
    ``process_id``, or set ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (what ``diffjax --distributed`` relies on).
    A plain single-host run leaves it off.
    """
    if not enabled:
        return
    for arg, var in PROCESS_ENV.items():
        if arg not in kwargs and os.environ.get(var):
            kwargs[arg] = int(os.environ[var])
    jax.distributed.initialize(**kwargs)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: every device of every host)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split evenly over the ``"data"`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Put every array of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def replicate_host(tree, mesh: Mesh):
    """Put every host array of ``tree``, the same in every process, on every device of ``mesh``.

    For data that every process holds whole (a training set); works across processes.
    """

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(replicated(mesh), x, x.shape)

    return jax.tree.map(put, tree)


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of a global batch; raises unless it splits evenly over devices."""
    if global_batch_size % mesh.size:
        raise ValueError(
            f"batch size {global_batch_size} is not divisible by the {mesh.size} devices of the "
            "mesh; choose a multiple"
        )
    return global_batch_size // jax.process_count()


def process_rows(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch that this process feeds (contiguous, in process order)."""
    n = local_batch_size(global_batch_size, mesh)
    return slice(jax.process_index() * n, (jax.process_index() + 1) * n)


def shard_batch(batch, mesh: Mesh):
    """Assemble global arrays, split along axis 0, from this process's rows of every leaf.

    Args:
      batch: a pytree of host arrays [B_local, ...] (B_local = global batch / processes).
      mesh: the data mesh.

    Returns:
      The same pytree of ``jax.Array`` [B_global, ...] sharded with :func:`batch_sharding`.
    """
    sharding = batch_sharding(mesh)
    local_devices = mesh.size // jax.process_count()

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_devices:
            raise ValueError(
                f"batch leaf of shape {x.shape} does not split over {local_devices} local devices"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)
