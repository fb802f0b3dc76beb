"""LiRA shadow models trained together as one vmapped, jitted program.

Shadow training is the cost of LiRA. S shadow models, each trained on its own random half of a
candidate pool (:func:`trustml.attacks.lira.shadow_masks`), share the model, the optimizer, the
number of steps and the batch size; only their parameters, optimizer states, init keys and
data indices differ. So one jitted ``vmap`` over models of a few unrolled training steps trains
them all, called repeatedly: the pool stays on device once, each step gathers ``[S, B]`` rows, and XLA
batches the S small matmuls into large ones. With a ``mesh`` (:func:`make_mesh`) the model axis
is split over devices with ``jax.shard_map``: each device trains S / D models (vmapped), with no
communication between devices, and the pool is replicated.

Data order is host-side and deterministic: model s at step t trains on rows
``index[s, t]`` drawn as epochs of shuffles of its IN set (seeded by ``(seed, s)``).
:func:`train_one` runs the same step for one model without ``vmap``; the test asserts the two
agree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trustml.attacks import lira
from trustml.core import devices, distributed, validation
from trustml.core import rng as rng_lib
from trustml.models import contract


def batch_indices(masks: np.ndarray, num_steps: int, batch_size: int, seed: int) -> np.ndarray:
  """Per-model, per-step row indices into the pool.

  Args:
    masks: ``[S, N]`` bool IN masks.
    num_steps: training steps.
    batch_size: rows per step.
    seed: data-order seed.

  Returns:
    ``[S, num_steps, batch_size]`` int32: consecutive shuffles of each model's IN rows.

  Raises:
    ConfigError: if a model's IN set is empty.
  """
  masks = np.asarray(masks, bool)
  validation.positive_int("num_steps", num_steps)
  validation.positive_int("batch_size", batch_size)
  need = num_steps * batch_size
  out = np.empty((masks.shape[0], need), np.int32)
  for s, row in enumerate(masks):
    members = np.nonzero(row)[0]
    if members.size == 0:
      raise validation.ConfigError(f"shadow model {s} has an empty training set")
    gen = rng_lib.numpy_rng(seed, "data", s)
    reps = -(-need // members.size)
    out[s] = np.concatenate([gen.permutation(members) for _ in range(reps)])[:need]
  return out.reshape(masks.shape[0], num_steps, batch_size)


def _train_step(model: contract.Model, optimizer: optax.GradientTransformation, dropout: bool):
  def step(state, index, t, pool):
    params, opt_state, key = state
    batch = {k: jnp.take(v, index, axis=0) for k, v in pool.items()}
    step_key = jax.random.fold_in(key, t) if dropout else None

    def mean_loss(p):
      return jnp.sum(model.per_example_loss(p, batch, step_key)) / jnp.maximum(
        jnp.sum(batch["weight"]), 1.0
      )

    loss, grads = jax.value_and_grad(mean_loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, key), loss

  return step


_COMPILED: dict[tuple, tuple] = {}

MODELS_AXIS = "models"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over ``num_devices`` (default all) devices with axis ``models``.

  Args:
    num_devices: devices to use (the first ``num_devices`` of ``jax.devices()``).

  Returns:
    The mesh for :func:`train_shadow_models`'s ``mesh`` argument.

  Raises:
    ConfigError: if ``num_devices`` is not in [1, jax.device_count()].
  """
  return devices.make_mesh_1d(MODELS_AXIS, num_devices, jax.sharding.AxisType.Auto)


STEPS_PER_CALL = 4  # Training steps unrolled into one jitted call (see _compiled).


def _compiled(model, optimizer, pool, batch_size, dropout, vmapped, mesh=None):
  """Jitted ``(init, steps)``, cached per (model, optimizer, shapes) so calls do not recompile.

  ``steps`` runs a few training steps unrolled (``lax.scan(..., unroll=True)``: no while loop)
  and Python drives the calls. A rolled ``lax.scan`` over all steps was measured ~20x slower for
  the CNN on XLA:CPU (convolutions inside a while loop: 0.47 s vs 0.024 s per step), and one call
  per step cost the vmapped transformer ~25 % in dispatch and copies; :data:`STEPS_PER_CALL`
  unrolled steps per call avoids both.
  """
  shapes = tuple(
    sorted((k, np.asarray(v).shape[1:], str(np.asarray(v).dtype)) for k, v in pool.items())
  )
  key = (id(model), id(optimizer), batch_size, dropout, vmapped, shapes, mesh)
  hit = _COMPILED.get(key)
  if hit is not None and hit[0] is model and hit[1] is optimizer:
    return hit[2]
  step = _train_step(model, optimizer, dropout)

  def steps(state, index, t0, pool):
    ts = t0 + jnp.arange(index.shape[0])
    return jax.lax.scan(lambda c, x: step(c, x[0], x[1], pool), state, (index, ts), unroll=True)

  if vmapped:
    init = jax.jit(jax.vmap(optimizer.init))
    steps = jax.vmap(steps, in_axes=(0, 0, None, None))
    if mesh is not None:  # Each device trains its own block of models; no collectives.
      steps = jax.shard_map(
        steps,
        mesh=mesh,
        in_specs=(P(MODELS_AXIS), P(MODELS_AXIS), P(), P()),
        out_specs=(P(MODELS_AXIS), P(MODELS_AXIS)),
      )
  else:
    init = jax.jit(optimizer.init)
  fns = (init, jax.jit(steps, donate_argnums=0))
  _COMPILED[key] = (model, optimizer, fns)
  return fns


def _run(fns, params, key, index, pool, mesh=None):
  """Runs the training steps: ``index`` is ``[..., num_steps, B]`` (leading S when vmapped)."""
  init, steps = fns
  index = jnp.asarray(index)
  pool_dev = {k: jnp.asarray(v) for k, v in pool.items()}
  if mesh is not None:  # Each process transfers only the models its devices train.
    split = NamedSharding(mesh, P(MODELS_AXIS))
    params, key, index = jax.tree.map(lambda x: distributed.put(x, split), (params, key, index))
    rep = NamedSharding(mesh, P())
    pool_dev = jax.tree.map(lambda x: distributed.put(x, rep), pool_dev)
  state = (params, init(params), key)
  n = index.shape[-2]
  losses = []
  t = 0
  while t < n:
    k = STEPS_PER_CALL if n - t >= STEPS_PER_CALL else 1  # Two compiled sizes at most.
    state, loss = steps(state, index[..., t : t + k, :], jnp.int32(t), pool_dev)
    losses.append(loss)
    t += k
  return state[0], jnp.concatenate(losses, axis=-1)


_INIT: dict[int, tuple] = {}


def _init(model, keys, example):
  """``vmap(model.init)`` over keys, jitted once per model (row s equals ``model.init(keys[s])``)."""
  hit = _INIT.get(id(model))
  if hit is None or hit[0] is not model:
    hit = (model, jax.jit(jax.vmap(model.init, in_axes=(0, None))))
    _INIT[id(model)] = hit
  return hit[1](keys, example)


def _keys(seed: int, which: np.ndarray) -> tuple[jax.Array, jax.Array]:
  init_keys = jnp.stack([rng_lib.stream_key(seed, "params", int(s)) for s in which])
  dropout_keys = jnp.stack([rng_lib.stream_key(seed, "dropout", int(s)) for s in which])
  return init_keys, dropout_keys


def _check_pool(pool: dict[str, np.ndarray]) -> int:
  for name in ("tokens", "mask", "label", "weight"):
    if name not in pool:
      raise validation.ConfigError(f"pool is missing column {name!r}")
  return int(np.asarray(pool["tokens"]).shape[0])


def _example(pool, batch_size):
  return {k: jnp.asarray(np.asarray(v)[:batch_size]) for k, v in pool.items()}


def train_shadow_models(
  model: contract.Model,
  optimizer: optax.GradientTransformation,
  pool: dict[str, np.ndarray],
  masks: np.ndarray,
  *,
  num_steps: int,
  batch_size: int,
  seed: int,
  dropout: bool = False,
  mesh: jax.sharding.Mesh | None = None,
):
  """Trains S shadow models at once (vmap over models inside one jit).

  Args:
    model: the ``Model`` (same architecture as the target).
    optimizer: an optax optimizer (shared hyper-parameters).
    pool: encoded candidate pool, columns ``[N, ...]`` (``tokens``, ``mask``, ``label``,
      ``weight`` at least).
    masks: ``[S, N]`` IN masks (:func:`trustml.attacks.lira.shadow_masks`).
    num_steps: steps per model.
    batch_size: rows per step.
    seed: seed of init keys and data order (model s uses ``fold_in(stream, s)``).
    dropout: whether to train with dropout on.
    mesh: a 1-D mesh with axis ``models`` (:func:`make_mesh`) to split the S models over its
      devices (S must be a multiple of the mesh size); ``None`` trains them on one device.
      The mesh may span the devices of several processes (``jax.distributed``): each process
      trains its devices' models and the results are gathered to every host (NumPy). The
      result does not depend on the mesh or the process count (up to float reassociation).

  Returns:
    ``(params, losses)``: stacked parameters with a leading axis S and ``[S, num_steps]``
    training losses (sharded over ``models`` when a one-process mesh is given; NumPy on every
    host when the mesh spans processes).

  Raises:
    ConfigError: on fewer than 2 models, masks that do not match the pool, or S not a
      multiple of the mesh size.
  """
  masks = np.asarray(masks, bool)
  n = _check_pool(pool)
  if masks.ndim != 2 or masks.shape[0] < 2:
    raise validation.ConfigError(f"num_shadow_models={masks.shape[0]} is invalid: must be >= 2")
  if masks.shape[1] != n:
    raise validation.ConfigError(f"masks cover {masks.shape[1]} candidates but the pool has {n}")
  if mesh is not None:
    if tuple(mesh.axis_names) != (MODELS_AXIS,):
      raise validation.ConfigError(
        f"mesh axes {tuple(mesh.axis_names)} are invalid: need the one axis {MODELS_AXIS!r}"
      )
    if masks.shape[0] % mesh.size:
      raise validation.ConfigError(
        f"num_shadow_models={masks.shape[0]} is invalid: must be a multiple of the mesh size "
        f"{mesh.size}"
      )
  index = batch_indices(masks, num_steps, batch_size, seed)
  init_keys, dropout_keys = _keys(seed, np.arange(masks.shape[0]))
  params = _init(model, init_keys, _example(pool, batch_size))
  fns = _compiled(model, optimizer, pool, batch_size, dropout, vmapped=True, mesh=mesh)
  out = _run(fns, params, dropout_keys, index, pool, mesh)
  if mesh is not None and mesh.is_multi_process:  # Every host gets all S models.
    return distributed.to_host(out)
  return out


def train_one(
  model: contract.Model,
  optimizer: optax.GradientTransformation,
  pool: dict[str, np.ndarray],
  masks: np.ndarray,
  which: int,
  *,
  num_steps: int,
  batch_size: int,
  seed: int,
  dropout: bool = False,
):
  """Trains shadow model ``which`` alone, exactly as :func:`train_shadow_models` would.

  Args:
    model, optimizer, pool, masks, num_steps, batch_size, seed, dropout: as in
      :func:`train_shadow_models`.
    which: the shadow model's index s.

  Returns:
    ``(params, losses [num_steps])`` of that one model.
  """
  masks = np.asarray(masks, bool)
  _check_pool(pool)
  index = batch_indices(masks, num_steps, batch_size, seed)[which]
  init_keys, dropout_keys = _keys(seed, np.arange(masks.shape[0]))
  # The same initial parameters as in train_shadow_models; training then runs without vmap.
  params = jax.tree.map(lambda x: x[which], _init(model, init_keys, _example(pool, batch_size)))
  fns = _compiled(model, optimizer, pool, batch_size, dropout, vmapped=False)
  return _run(fns, params, dropout_keys[which], index, pool)


def shadow_statistics(
  model: contract.Model, stacked_params, arrays: dict[str, np.ndarray], batch_size: int = 512
) -> np.ndarray:
  """Logit-scaled confidences ``[S, N]`` of every shadow model on every candidate.

  Args:
    model: classifier ``Model``.
    stacked_params: parameters with a leading axis S.
    arrays: encoded candidates ``[N, ...]``.
    batch_size: candidates per jitted call.

  Returns:
    ``[S, N]`` float64.
  """

  @jax.jit
  def stats(params, batch):
    logits = jax.vmap(lambda p: model.apply(p, batch))(params)
    return lira.logit_scaled_confidence(logits, batch["label"][None])

  n = int(np.asarray(arrays["tokens"]).shape[0])
  out = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    pad = np.r_[idx, np.full(batch_size - len(idx), idx[-1])]
    batch = {
      k: jnp.asarray(np.asarray(v)[pad])
      for k, v in arrays.items()
      if k in ("tokens", "mask", "label", "weight")
    }
    out.append(np.asarray(stats(stacked_params, batch))[:, : len(idx)])
  return np.concatenate(out, axis=1).astype(np.float64)


__all__ = [
  "MODELS_AXIS",
  "batch_indices",
  "make_mesh",
  "shadow_statistics",
  "train_one",
  "train_shadow_models",
]
