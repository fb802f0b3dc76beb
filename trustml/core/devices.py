"""Device meshes shared by the pillars (FL clients, LiRA shadow models) split over devices."""

import jax

from trustml.core import validation


def make_mesh_1d(
  axis_name: str,
  num_devices: int | None = None,
  axis_type: jax.sharding.AxisType = jax.sharding.AxisType.Auto,
) -> jax.sharding.Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (default all) with one named axis.

  Args:
    axis_name: the mesh axis name (e.g. ``"clients"``, ``"models"``).
    num_devices: devices to use (the first ``num_devices`` of ``jax.devices()``).
    axis_type: ``Explicit`` when inputs are placed with explicit shardings (the FL round),
      ``Auto`` when plain ``jit`` should follow the input shardings (the shadow trainer).

  Returns:
    The mesh.

  Raises:
    ConfigError: if ``num_devices`` is not in [1, jax.device_count()].
  """
  n = jax.device_count() if num_devices is None else num_devices
  validation.positive_int("num_devices", n)
  if n > jax.device_count():
    raise validation.ConfigError(
      f"num_devices={n} is invalid: only {jax.device_count()} devices are visible"
    )
  return jax.make_mesh((n,), (axis_name,), axis_types=(axis_type,))


__all__ = ["make_mesh_1d"]
