"""Data parallelism: one mesh over every device, its shardings, global batches, start-up.

    parallel.initialize(coordinator_address, num_processes, process_id)  # multi-host only
    mesh = parallel.create_mesh()                       # axis 'data' over jax.devices()
    state = jax.device_put(state, parallel.replicated(mesh))
    batch = parallel.global_batch(local_batch, mesh)    # per-process rows -> one global array

Params and optimizer state are replicated; batches are split on their leading axis over
'data'. Each process holds rows [p * B_local, (p + 1) * B_local) of a global batch of
B_local * process_count rows, and `global_batch` joins them with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = 'data'

# Environment variables that say this process is one of several launched by a cluster
# manager that jax.distributed.initialize() can read without arguments.
_CLUSTER_VARIABLES = ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES',
                      'MEGASCALE_COORDINATOR_ADDRESS', 'OMPI_MCA_orte_hnp_uri')


class CoordinatorUnreachableError(RuntimeError):
  """A multi-process run could not join its coordinator within the timeout."""


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout_s: int = 300) -> bool:
  """Joins this process to a multi-process JAX run; returns whether it did.

  With any argument given, calls `jax.distributed.initialize` with them (the rest are
  auto-detected). With none, initializes only where a cluster manager has set up a
  multi-process job that JAX detects itself (SLURM with more than one task, Cloud TPU
  pods, Open MPI, JAX_COORDINATOR_ADDRESS); a single host does nothing. Call it before
  anything else touches JAX devices. A coordinator that does not answer (or processes
  that do not all join) within `timeout_s` seconds raises CoordinatorUnreachableError
  naming the address.
  """
  if coordinator_address or num_processes or process_id is not None:
    _join(timeout_s, coordinator_address, num_processes, process_id)
    return True
  if _in_multiprocess_cluster():
    _join(timeout_s)
    return True
  return False


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once a TCP connection to `address` (host:port) succeeds.

  Raises CoordinatorUnreachableError after `timeout_s` seconds of refusals. (Past its
  deadline jax.distributed.initialize aborts the process from C++, with no Python error to
  catch: a process that is not the coordinator checks first.)"""
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip('[]'), int(port)), timeout=2):
        return
    except (OSError, ValueError) as error:
      if time.monotonic() >= deadline or isinstance(error, ValueError):
        raise CoordinatorUnreachableError(
            f'could not join the coordinator at {address} within {timeout_s:g} s '
            f'({error}); check that process 0 runs and that the address and port are '
            'reachable from here') from None
      time.sleep(0.5)


def _join(timeout_s: int, address: Optional[str] = None, num_processes: Optional[int] = None,
          process_id: Optional[int] = None) -> None:
  if address and process_id:  # not the coordinator itself: it must be listening
    wait_for_coordinator(address, timeout_s)
  try:
    jax.distributed.initialize(address, num_processes, process_id,
                               initialization_timeout=int(timeout_s))
  except Exception as error:  # pylint: disable=broad-except  (XLA raises its own types)
    address = address or os.environ.get('JAX_COORDINATOR_ADDRESS',
                                        'the auto-detected coordinator')
    detail = next((line.strip() for line in str(error).splitlines() if line.strip()),
                  type(error).__name__)
    raise CoordinatorUnreachableError(
        f'could not join the coordinator at {address} within {timeout_s} s ({detail[:200]}); '
        'check that process 0 runs and that the address and port are reachable from here'
    ) from None


def _in_multiprocess_cluster() -> bool:
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    return True
  return any(os.environ.get(name) for name in _CLUSTER_VARIABLES)


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every process).

  Axis type Auto: shardings are explicit where we pass them, XLA's choice elsewhere."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (params, optimizer state, metrics)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Split on the leading (batch) axis over 'data'; other axes whole."""
  return NamedSharding(mesh, P(DATA))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = 'batch_size') -> None:
  """Checks that a global batch splits evenly over the devices and the processes.

  ValueError unless a global batch splits evenly over the mesh's devices and over the
  processes."""
  devices, processes = mesh.devices.size, jax.process_count()
  if batch_size <= 0 or batch_size % devices or batch_size % processes:
    raise ValueError(f'{what} {batch_size} must be a positive multiple of the number of '
                     f'devices ({devices}) and of processes ({processes})')


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Per-process batch arrays -> global jax.Arrays sharded over 'data'.

  A pytree of per-process NumPy arrays (this process's rows of the global batch)
  -> the same pytree of global jax.Arrays sharded on their leading axis over 'data'."""
  local_batch = jax.tree.map(np.asarray, local_batch)
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)


def is_main_process() -> bool:
  """True on the process that writes logs, metrics and summaries."""
  return jax.process_index() == 0
