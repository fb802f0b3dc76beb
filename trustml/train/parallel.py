"""Data-parallel placement of a training run: the mesh, the shardings and the jitted step.

The loop's step is written over the GLOBAL logical batch. :class:`DataParallel` jits it with
the batch split over the mesh's ``data`` axis (``NamedSharding``) and the state replicated (or,
with ``mesh.fsdp=True``, large leaves split over ``data``); XLA's partitioner then runs the
per-example work (forward, backward, DP per-example clipping) on each device's own rows,
reduces the sums across devices (and processes), and computes everything that depends only on
replicated values (the step key, the DP noise draw from it, the optimizer update) identically
on every device. So a DP step adds its Gaussian noise once per logical batch, not once per
device, and a run on D devices computes the same function as on one device (up to float
re-association of the cross-device sum).

In a multi-process run each process derives the same global host batch from ``(seed, step)``
and feeds only its own rows (:func:`trustml.core.distributed.put_global_batch`).
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from trustml.core import devices, distributed, validation
from trustml.train import config as train_config


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """A run's mesh and how its state and batches are placed on it.

  Attributes:
    mesh: the trainers' ``(data, model)`` mesh (:func:`trustml.core.devices.make_mesh`).
    fsdp: split large state leaves over ``data`` (:func:`trustml.core.devices.fsdp_spec`).
  """

  mesh: jax.sharding.Mesh
  fsdp: bool = False

  @classmethod
  def from_config(cls, config: Any) -> "DataParallel":
    """From the config's ``mesh`` section (defaults: all devices, replicated state).

    Raises:
      ConfigError: if the section does not fit the visible devices.
    """
    fields = train_config.mesh_fields(config)
    train_config.validate_mesh(fields)
    mesh = devices.make_mesh(int(fields["num_devices"]), model=int(fields["model"]))
    return cls(mesh, bool(fields["fsdp"]))

  @property
  def num_shards(self) -> int:
    """Size of the ``data`` axis: a step's rows are split this many ways."""
    return devices.num_data_shards(self.mesh)

  def check_rows(self, batch: Mapping[str, np.ndarray], what: str = "train.batch_size") -> None:
    """Raises ConfigError (before compute) unless the batch rows split evenly over ``data``."""
    rows = int(np.asarray(batch["weight"]).shape[0])
    if rows % self.num_shards:
      raise validation.ConfigError(
        f"{what}={rows} is invalid: the rows of a step must be a multiple of the "
        f"{self.num_shards} data shards (mesh.num_devices / mesh.model)"
      )

  def state_shardings(self, state: Any) -> Any:
    """Per-leaf shardings of a state pytree (replicated or FSDP)."""
    return devices.state_shardings(state, self.mesh, fsdp=self.fsdp)

  def place_state(self, state: Any) -> Any:
    """The state as global arrays with :meth:`state_shardings`."""
    return jax.tree.map(distributed.put, state, self.state_shardings(state))

  def init_state(self, init_fn: Callable[[], Any]) -> Any:
    """Runs ``init_fn() -> state`` under ``jax.jit`` with the state's shardings as outputs.

    The state is created directly as global arrays in place (no host round trip, and under
    FSDP no device ever holds a whole table), compiled once rather than dispatched op by op.
    """
    shardings = self.state_shardings(jax.eval_shape(init_fn))
    return jax.jit(init_fn, out_shardings=shardings)()

  def batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, jax.sharding.Sharding]:
    """Rows over ``data``; 0-d step scalars (σ_t, C_t) replicated."""
    return {k: devices.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}

  def place_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global batch arrays, this process feeding only its own rows."""
    return distributed.put_global_batch(batch, self.batch_shardings(batch))

  def jit_step(
    self, step_fn: Callable, state: Any, batch: Mapping[str, Any]
  ) -> Callable[[Any, Mapping[str, jax.Array]], tuple[Any, Any]]:
    """``jax.jit`` of ``step_fn(state, batch) -> (state, aux)`` with explicit shardings.

    The state is donated and keeps its sharding; ``aux`` (scalars) comes back replicated.
    """
    state_sh = self.state_shardings(state)
    return jax.jit(
      step_fn,
      in_shardings=(state_sh, self.batch_shardings(batch)),
      out_shardings=(state_sh, devices.replicated(self.mesh)),
      donate_argnums=0,
    )

  def gathered(self, tree: Any) -> Any:
    """``tree`` with every leaf replicated (FSDP-split parameters gathered), for callers that
    read the final parameters on the host."""
    if not self.fsdp:
      return tree
    rep = devices.replicated(self.mesh)
    return jax.jit(lambda t: t, out_shardings=rep)(tree)


__all__ = ["DataParallel"]
