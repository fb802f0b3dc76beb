"""Multi-process JAX: start-up, who writes, and each process's slice of the global batch.

trustml builds on JAX's own multi-controller runtime: every process runs the same program,
``jax.devices()`` lists the devices of all processes, and a ``jax.jit`` over a mesh that spans
them runs as one SPMD program with XLA's collectives between hosts (gloo on CPU, NCCL on GPU).

:func:`initialize` must run before any other JAX call (the launch scripts call it first). Its
arguments come from ``--coordinator_address`` / ``--num_processes`` / ``--process_id``, else
from the environment variables JAX documents (``JAX_COORDINATOR_ADDRESS``,
``JAX_COORDINATOR_PORT``, ``JAX_LOCAL_DEVICE_IDS``; plus ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``), else from JAX's cluster auto-detection (SLURM, Open MPI, Kubernetes, TPU
pods) when ``auto=True``. With none of them it is a no-op: one process.

Two-host example (host A is 10.0.0.1)::

  python -m launch.train --config=configs/dp_nlu.py --workdir=/shared/dp \\
      --coordinator_address=10.0.0.1:4321 --num_processes=2 --process_id=0   # on host A
  python -m launch.train --config=configs/dp_nlu.py --workdir=/shared/dp \\
      --coordinator_address=10.0.0.1:4321 --num_processes=2 --process_id=1   # on host B
"""

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from trustml.core import validation

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

_STATE: dict[str, Any] = {"initialized": False}


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise validation.ConfigError(f"${name}={value!r} is invalid: must be an integer") from None


def resolve_args(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> tuple[str | None, int | None, int | None]:
  """Fills unset arguments from the environment and validates them (no JAX call).

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator.
    num_processes: number of processes.
    process_id: this process's rank in ``[0, num_processes)``.

  Returns:
    ``(coordinator_address, num_processes, process_id)``; entries may stay ``None``.

  Raises:
    ConfigError: on a malformed address or an out-of-range count / rank.
  """
  address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
  n = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  pid = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
    raise validation.ConfigError(f"coordinator_address={address!r} is invalid: host:port")
  if n is not None:
    validation.positive_int("num_processes", n)
  if pid is not None:
    validation.non_negative_int("process_id", pid)
    if n is not None and pid >= n:
      raise validation.ConfigError(f"process_id={pid} is invalid: must be < num_processes={n}")
  return address, n, pid


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
) -> bool:
  """Starts JAX's multi-process runtime when a multi-process run is asked for.

  Must be called before any other JAX computation. On CPU it selects gloo collectives (XLA's
  default CPU client has none across processes).

  Args:
    coordinator_address: ``host:port`` of process 0 (flag, else ``$JAX_COORDINATOR_ADDRESS``).
    num_processes: process count (flag, else ``$JAX_NUM_PROCESSES``).
    process_id: this process's rank (flag, else ``$JAX_PROCESS_ID``).
    auto: with nothing given, let JAX detect a cluster (SLURM, Open MPI, TPU pod, ...).

  Returns:
    True when the runtime was started (or already was), False for a single-process run.

  Raises:
    ConfigError: on invalid arguments (before any compute).
  """
  if _STATE["initialized"]:
    return True
  address, n, pid = resolve_args(coordinator_address, num_processes, process_id)
  if address is None and n is None and pid is None and not auto:
    return False
  if n == 1 and not auto:
    return False
  if address is None and not auto:
    raise validation.ConfigError(
      f"coordinator_address=None is invalid: needed with num_processes={n} (host:port of "
      f"process 0, or ${ENV_ADDRESS})"
    )
  # Only the CPU client reads this; GPU/TPU collectives are unaffected.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid)
  _STATE["initialized"] = True
  return True


def is_main_process() -> bool:
  """True on process 0, the one that writes the run contract (summary, metrics, plots)."""
  return jax.process_index() == 0


def process_rows(sharding: jax.sharding.Sharding, num_rows: int) -> slice:
  """The contiguous rows of a ``[num_rows, ...]`` array this process's devices hold.

  Raises:
    ValueError: if the local rows are not one contiguous block (not a ``data``-axis split).
  """
  index_map = sharding.addressable_devices_indices_map((num_rows,))
  starts, stops = [], []
  for idx in index_map.values():
    s = idx[0] if idx else slice(None)
    starts.append(s.start or 0)
    stops.append(num_rows if s.stop is None else s.stop)
  lo, hi = min(starts), max(stops)
  covered = np.zeros(num_rows, bool)
  for a, b in zip(starts, stops, strict=True):
    covered[a:b] = True
  if not covered[lo:hi].all():
    raise ValueError(f"process rows {lo}:{hi} of {num_rows} are not contiguous")
  return slice(lo, hi)


def put_global_batch(
  batch: Mapping[str, np.ndarray], shardings: Mapping[str, jax.sharding.Sharding]
) -> dict[str, jax.Array]:
  """Builds global arrays from the host batch, each process feeding only its own rows.

  Every process derives the same global batch from ``(seed, step)``; here each one hands
  ``jax.make_array_from_process_local_data`` just the rows its devices hold (replicated 0-d
  step scalars are handed whole).

  Args:
    batch: host arrays ``[rows, ...]`` (and 0-d scalars) of the whole logical batch.
    shardings: one sharding per key (:func:`trustml.core.devices.batch_sharding`).

  Returns:
    Dict of global ``jax.Array``.

  Raises:
    ConfigError: if the rows do not split evenly over the shards.
  """
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    sharding = shardings[k]
    if v.ndim == 0 or sharding.is_fully_replicated:
      out[k] = jax.make_array_from_process_local_data(sharding, v, v.shape)
      continue
    shards = _row_shards(sharding)
    if v.shape[0] % shards:
      raise validation.ConfigError(
        f"batch rows={v.shape[0]} is invalid: must be a multiple of the {shards} data shards"
      )
    rows = process_rows(sharding, v.shape[0])
    out[k] = jax.make_array_from_process_local_data(sharding, v[rows], v.shape)
  return out


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def put(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  """Places a host or single-device value on a (possibly multi-process) sharding.

  Every process must pass the same value (it is derived from the seed); each transfers only
  the shards its own devices hold. Typed PRNG keys travel as their raw key data.
  """
  if _is_key(x):
    data = jax.device_put(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return jax.device_put(x, sharding)


def _row_shards(sharding: jax.sharding.Sharding) -> int:
  """How many ways axis 0 is split (mesh axes named in the spec's first entry)."""
  if not isinstance(sharding, jax.sharding.NamedSharding) or not sharding.spec:
    return 1
  first = sharding.spec[0]
  names = () if first is None else (first,) if isinstance(first, str) else tuple(first)
  return int(np.prod([sharding.mesh.shape[a] for a in names], dtype=np.int64))


def to_host(tree: Any) -> Any:
  """NumPy copies of a pytree of (possibly multi-process, sharded) arrays, on every process."""
  leaves, treedef = jax.tree.flatten(tree)
  out = []
  for x in leaves:
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      out.append(np.asarray(multihost_utils.process_allgather(x, tiled=True)))
    else:
      out.append(np.asarray(x))
  return jax.tree.unflatten(treedef, out)


def same_on_all_processes(value: int, bits: int = 128) -> int:
  """Process 0's ``value`` (a non-negative int below ``2**bits``) on every process.

  A secret drawn from the OS differs per process; DP noise keys and Poisson coins must not.
  """
  if jax.process_count() == 1:
    return int(value)
  words = bits // 32
  arr = np.array([(int(value) >> (32 * i)) & 0xFFFFFFFF for i in range(words)], np.uint32)
  got = np.asarray(multihost_utils.broadcast_one_to_all(arr)).astype(np.uint64)
  return sum(int(w) << (32 * i) for i, w in enumerate(got))


def sync(name: str) -> None:
  """A barrier across processes (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


__all__ = [
  "ENV_ADDRESS",
  "ENV_NUM_PROCESSES",
  "ENV_PROCESS_ID",
  "initialize",
  "is_main_process",
  "process_rows",
  "put",
  "put_global_batch",
  "resolve_args",
  "same_on_all_processes",
  "sync",
  "to_host",
]
