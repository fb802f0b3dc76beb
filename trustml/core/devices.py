"""Device meshes shared by the pillars, and the shardings the trainers place state with.

* :func:`make_mesh`: the trainers' mesh, axes ``("data", "model")``: the global batch is split
  over ``data``; ``model`` (size 1 today) is room for tensor parallelism. In a multi-process run
  it spans the devices of every process (each process contributes the same number).
* :func:`make_mesh_1d`: one named axis (the FL round's ``clients``, LiRA's ``models``).
* :func:`batch_sharding`, :func:`replicated`, :func:`state_shardings`: where a batch, a scalar
  and the training state live on a mesh; ``fsdp=True`` splits each large parameter (and its
  optimizer moments) along one dimension over ``data`` (ZeRO-3 / FSDP style; XLA all-gathers
  it for the forward pass and reduce-scatters its gradient).
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trustml.core import validation

DATA_AXIS = "data"
MODEL_AXIS = "model"
FSDP_MIN_SIZE = 2**14  # Leaves with fewer elements stay replicated under FSDP (not worth a gather).


def _mesh_devices(n: int) -> list[Any]:
  """The first ``n / process_count`` local devices of every process, process by process."""
  procs = jax.process_count()
  if n % procs:
    raise validation.ConfigError(
      f"num_devices={n} is invalid: must be a multiple of the {procs} processes"
    )
  per = n // procs
  by_process: dict[int, list[Any]] = {}
  for d in jax.devices():
    by_process.setdefault(d.process_index, []).append(d)
  out = []
  for p in sorted(by_process):
    if len(by_process[p]) < per:
      raise validation.ConfigError(
        f"num_devices={n} is invalid: process {p} has only {len(by_process[p])} devices"
      )
    out.extend(by_process[p][:per])
  return out


def _resolve(num_devices: int | None) -> int:
  n = jax.device_count() if not num_devices else num_devices
  validation.positive_int("num_devices", n)
  if n > jax.device_count():
    raise validation.ConfigError(
      f"num_devices={n} is invalid: only {jax.device_count()} devices are visible"
    )
  return n


def make_mesh(num_devices: int | None = 0, *, model: int = 1) -> jax.sharding.Mesh:
  """The trainers' 2-D mesh ``(data, model)`` over ``num_devices`` devices (0 / None = all).

  Args:
    num_devices: global devices to use; in a multi-process run, a multiple of the process
      count (each process contributes ``num_devices / process_count`` of its local devices).
    model: size of the ``model`` axis (1 = pure data parallelism).

  Returns:
    A mesh of shape ``(num_devices / model, model)`` with Auto axis types, so plain ``jax.jit``
    with ``NamedSharding`` inputs lets XLA's partitioner place every intermediate.

  Raises:
    ConfigError: if the sizes do not fit the visible devices.

  Example:
    >>> mesh = make_mesh()  # doctest: +SKIP
    >>> mesh.shape["data"]  # doctest: +SKIP
    4
  """
  n = _resolve(num_devices)
  validation.positive_int("mesh.model", model)
  if n % model:
    raise validation.ConfigError(f"mesh.model={model} is invalid: must divide num_devices={n}")
  devs = np.asarray(_mesh_devices(n)).reshape(n // model, model)
  return jax.sharding.Mesh(
    devs, (DATA_AXIS, MODEL_AXIS), axis_types=(jax.sharding.AxisType.Auto,) * 2
  )


def make_mesh_1d(
  axis_name: str,
  num_devices: int | None = None,
  axis_type: jax.sharding.AxisType = jax.sharding.AxisType.Auto,
) -> jax.sharding.Mesh:
  """A 1-D mesh over ``num_devices`` devices (default all) with one named axis.

  Args:
    axis_name: the mesh axis name (e.g. ``"clients"``, ``"models"``).
    num_devices: devices to use (in a multi-process run, the same number from every process).
    axis_type: ``Explicit`` when inputs are placed with explicit shardings (the FL round),
      ``Auto`` when plain ``jit`` should follow the input shardings (the shadow trainer).

  Returns:
    The mesh.

  Raises:
    ConfigError: if ``num_devices`` is not in [1, jax.device_count()].
  """
  n = jax.device_count() if num_devices is None else num_devices
  validation.positive_int("num_devices", n)
  n = _resolve(n)
  return jax.sharding.Mesh(np.asarray(_mesh_devices(n)), (axis_name,), axis_types=(axis_type,))


def num_data_shards(mesh: jax.sharding.Mesh | None) -> int:
  """Size of the mesh's ``data`` axis (1 without a mesh)."""
  return 1 if mesh is None else int(mesh.shape[DATA_AXIS])


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding of an array held whole by every device of ``mesh``."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
  """Leading (example) axis split over ``data``; 0-d step scalars replicated."""
  return NamedSharding(mesh, P(DATA_AXIS) if ndim else P())


def fsdp_spec(shape: Sequence[int], num_shards: int, min_size: int | None = None) -> P:
  """The FSDP partition of one leaf: its largest dimension divisible by ``num_shards``.

  Args:
    shape: the leaf's shape.
    num_shards: the ``data`` axis size.
    min_size: leaves with fewer elements stay replicated (default :data:`FSDP_MIN_SIZE`).

  Returns:
    ``P(..., "data", ...)`` on that dimension, or ``P()`` (replicated) when none divides.
  """
  min_size = FSDP_MIN_SIZE if min_size is None else min_size
  if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  order = sorted(range(len(shape)), key=lambda i: (-shape[i], i))
  for i in order:
    if shape[i] % num_shards == 0:
      return P(*([None] * i + [DATA_AXIS]))
  return P()


def state_shardings(tree: Any, mesh: jax.sharding.Mesh, *, fsdp: bool = False) -> Any:
  """Shardings for a state pytree: replicated, or FSDP-split per leaf (:func:`fsdp_spec`).

  Optimizer moments have their parameter's shape, so they get the same split.

  Args:
    tree: pytree of arrays (or ``jax.ShapeDtypeStruct``).
    mesh: the trainers' mesh.
    fsdp: split large leaves over ``data`` instead of replicating them.

  Returns:
    A pytree of ``NamedSharding`` with the structure of ``tree``.
  """
  n = num_data_shards(mesh)

  def one(x):
    shape = tuple(getattr(x, "shape", ()))
    return NamedSharding(mesh, fsdp_spec(shape, n) if fsdp else P())

  return jax.tree.map(one, tree)


__all__ = [
  "DATA_AXIS",
  "FSDP_MIN_SIZE",
  "MODEL_AXIS",
  "batch_sharding",
  "fsdp_spec",
  "make_mesh",
  "make_mesh_1d",
  "num_data_shards",
  "replicated",
  "state_shardings",
]
