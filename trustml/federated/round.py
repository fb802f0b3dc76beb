"""One federated round as one XLA program, plus a plain per-client Python reference backend.

The round of :func:`build` (FedJAX-style ``(init, apply)``):

1. every packed client runs local training: ``lax.scan`` over its ``S`` steps, masked by its
   ``step_mask`` (FedProx adds ``mu/2 ||w - w_global||^2``; SCAFFOLD corrects the gradient by
   ``c - c_i``);
2. clients are ``vmap``-ped; with a mesh, the client axis is split over the ``clients`` mesh axis
   with ``jax.shard_map`` and each device sums its own clients' weighted deltas before a
   ``psum`` across devices;
3. the weighted mean delta (or, under DP, the noisy clipped sum over a fixed denominator) becomes
   the pseudo-gradient ``-Delta`` of an optax server optimizer.

:func:`build` returns ``apply`` (the jitted, state-donating round) and ``reference_apply``
(Python loops over clients and steps calling a jitted single step); both compute the same
function of ``(state, packed, key)``.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trustml.core import conv_layout, devices
from trustml.federated import dp as dp_lib
from trustml.models import contract

CLIENTS_AXIS = "clients"


class ServerState(NamedTuple):
  """Server state between rounds.

  Attributes:
    params: global model parameters.
    opt_state: server optimizer state.
    round: int32 round counter.
    control: SCAFFOLD server control variate (zeros-like params; ``()`` otherwise).
    l2_clip_norm: float32 current DP clip (adaptive clipping); 0 without DP.
    dp_noise: the DP privatizer's state (secret key data, round count); ``()`` without DP.
  """

  params: Any
  opt_state: Any
  round: jax.Array
  control: Any
  l2_clip_norm: jax.Array
  dp_noise: Any = ()


@dataclasses.dataclass(frozen=True)
class RoundSpec:
  """Static description of an algorithm's round.

  Attributes:
    name: algorithm name.
    client_optimizer: optax transformation of local training (fresh state each round).
    server_optimizer: optax transformation applied to the pseudo-gradient ``-Delta``.
    proximal_mu: FedProx ``mu`` (0 = FedAvg local objective).
    scaffold: use SCAFFOLD control variates (option II); needs an SGD client optimizer.
    client_learning_rate: local step size (SCAFFOLD's ``c_i`` update divides by it).
    dp: user-level DP settings, or ``None``.
    dropout: run local training with dropout (per client, per step keys).
  """

  name: str
  client_optimizer: optax.GradientTransformation
  server_optimizer: optax.GradientTransformation
  proximal_mu: float = 0.0
  scaffold: bool = False
  client_learning_rate: float = 0.0
  dp: dp_lib.DpConfig | None = None
  dropout: bool = False


class FedAlgorithm(NamedTuple):
  """An FL algorithm: ``init(params) -> ServerState`` and the round ``apply``.

  ``apply(state, packed, key) -> (state, diagnostics)`` is jitted and donates ``state``;
  ``reference_apply`` has the same signature and runs a Python loop over clients and steps.
  """

  name: str
  init: Callable[[Any], ServerState]
  apply: Callable[..., tuple[ServerState, dict]]
  reference_apply: Callable[..., tuple[ServerState, dict]]
  spec: RoundSpec


def _zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over ``num_devices`` (default all) devices with axis ``clients``.

  Args:
    num_devices: devices to use (the first ``num_devices`` of ``jax.devices()``).

  Returns:
    The mesh for :func:`shard_packed` and the jitted round (Explicit axis type).

  Raises:
    ConfigError: if ``num_devices`` is not in [1, jax.device_count()].
  """
  return devices.make_mesh_1d(CLIENTS_AXIS, num_devices, jax.sharding.AxisType.Explicit)


def shard_packed(packed: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict:
  """Places a packed round on ``mesh`` with the client axis split over ``clients``."""
  sharding = NamedSharding(mesh, P(CLIENTS_AXIS))
  return {k: jax.device_put(v, sharding) if k != "scalars" else v for k, v in packed.items()}


def _local_loss(model: contract.Model, spec: RoundSpec, params, global_params, batch, key):
  losses = model.per_example_loss(params, batch, key if spec.dropout else None)
  loss = jnp.sum(losses) / jnp.maximum(jnp.sum(batch["weight"]), 1e-9)
  total = loss
  if spec.proximal_mu:
    sq = sum(
      jnp.sum(jnp.square(a - b))
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(global_params), strict=True)
    )
    total = loss + 0.5 * spec.proximal_mu * sq
  return total, loss


def _make_local_step(model: contract.Model, spec: RoundSpec):
  """``step(params, opt_state, global_params, batch, key, correction) -> (params, opt_state, loss)``."""

  def step(params, opt_state, global_params, batch, key, correction):
    grads, loss = jax.grad(
      lambda p: _local_loss(model, spec, p, global_params, batch, key), has_aux=True
    )(params)
    if spec.scaffold:
      grads = jax.tree.map(jnp.add, grads, correction)
    updates, opt_state = spec.client_optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def _client_update(
  model, spec, step_fn, global_params, batches, step_mask, key, server_control, client_control
):
  """Local training of one client (``lax.scan``); returns delta, new control, aux."""
  opt_state = spec.client_optimizer.init(global_params)
  correction = jax.tree.map(jnp.subtract, server_control, client_control) if spec.scaffold else ()

  def body(carry, xs):
    params, opt_state, s = carry
    batch, m = xs
    new_params, new_opt, loss = step_fn(
      params, opt_state, global_params, batch, jax.random.fold_in(key, s), correction
    )
    keep = m > 0
    params = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new_params, params)
    opt_state = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new_opt, opt_state)
    return (params, opt_state, s + 1), loss * m

  # The body's convolutions in XLA:CPU's library layout (core/conv_layout): a rolled scan
  # otherwise emits the model's non-canonical convolutions (its backward's, eDP's clipped
  # sum) as naive loop nests. Identity on other backends.
  scan_body = conv_layout.loop_body(body)
  (params, _, _), losses = jax.lax.scan(
    scan_body, (global_params, opt_state, jnp.int32(0)), (batches, step_mask)
  )
  delta = jax.tree.map(jnp.subtract, params, global_params)
  steps = jnp.sum(step_mask)
  new_control = _scaffold_control(spec, delta, steps, server_control, client_control)
  return delta, new_control, jnp.sum(losses) / jnp.maximum(steps, 1.0)


def _scaffold_control(spec, delta, steps, server_control, client_control):
  if not spec.scaffold:
    return ()
  # Option II: c_i+ = c_i - c + (x - y_i) / (K lr) = c_i - c - delta / (K lr).
  scale = jnp.where(steps > 0, 1.0 / (jnp.maximum(steps, 1.0) * spec.client_learning_rate), 0.0)
  return jax.tree.map(
    lambda ci, c, d: jnp.where(steps > 0, ci - c - d * scale, ci),
    client_control,
    server_control,
    delta,
  )


def _client_key(key, client_id):
  return jax.random.fold_in(jax.random.fold_in(key, 1), client_id)


def _global_norm(tree) -> jax.Array:
  return optax.tree_utils.tree_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def _aggregate_client(spec, delta, weight, clip_norm):
  """Per-client contribution to the sums: weighted (clipped) delta, norm, unclipped, valid.

  Under DP the delta is one row of the DP aggregator's clipped sum (the privacy core's
  clipping, the same as DP-SGD), scaled by the client's capped weight.
  """
  real = (weight > 0).astype(jnp.float32)
  if spec.dp is None:
    contrib = jax.tree.map(lambda d: d * weight, delta)
    return contrib, _global_norm(delta), real, real
  rows = jax.tree.map(lambda d: d[None], delta)
  contrib, counts, norms = dp_lib.DpFedAvgAggregator(spec.dp).client_sums(
    rows, weight[None], clip_norm
  )
  return contrib, norms[0], counts["num_unclipped"], counts["num_valid"]


def _server_step(spec, state: ServerState, sums, key, scalars):
  """Turns the round's sums into the new server state (identical in both backends)."""
  del key  # DP noise comes from the secret key in state.dp_noise, never from the round key.
  wsum, wtotal, unclipped, control_sum, loss_sum, num_real, num_valid = sums
  metrics = {"train/loss": loss_sum / jnp.maximum(num_real, 1.0), "fed/num_clients": num_real}
  clip_norm = state.l2_clip_norm
  dp_noise = state.dp_noise
  if spec.dp is None:
    # Self-normalised (Hajek) by default; a fixed Horvitz-Thompson denominator when packed.
    denom = scalars.get("fixed_denominator", jnp.maximum(wtotal, 1e-12))
    mean_delta = jax.tree.map(lambda s: s / denom, wsum)
  else:
    # Exact statistics of the users' data: released only with release_unsafe_stats.
    metrics = {f"unsafe/{k.split('/', 1)[1]}": v for k, v in metrics.items()}
    agg_state = dp_lib.DpAggregatorState(dp_noise, clip_norm)
    counts = {"num_valid": num_valid, "num_unclipped": unclipped}
    mean_delta, agg_state, aux = dp_lib.DpFedAvgAggregator(spec.dp).release(
      wsum, counts, agg_state, scalars["denominator"], scalars["expected_clients"]
    )
    metrics.update(aux)
    dp_noise, clip_norm = agg_state.privatizer, agg_state.l2_clip_norm
  pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
  updates, opt_state = spec.server_optimizer.update(pseudo_grad, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  control = state.control
  if spec.scaffold:
    # c <- c + (1/N) sum_{i in S} dc_i: control_sum is unweighted (Karimireddy et al., Alg. 1).
    control = jax.tree.map(lambda c, s: c + s * scalars["control_scale"], control, control_sum)
  metrics["fed/delta_norm"] = _global_norm(mean_delta)
  new_state = ServerState(params, opt_state, state.round + 1, control, clip_norm, dp_noise)
  return new_state, metrics


def _default_scalars(packed):
  scalars = dict(packed.get("scalars", {}))
  scalars.setdefault("denominator", jnp.float32(1.0))
  scalars.setdefault("expected_clients", jnp.float32(1.0))
  scalars.setdefault("control_scale", jnp.float32(0.0))
  return {k: jnp.asarray(v, jnp.float32) for k, v in scalars.items()}


def build(
  model: contract.Model,
  spec: RoundSpec,
  *,
  mesh: jax.sharding.Mesh | None = None,
  donate: bool = True,
) -> FedAlgorithm:
  """Builds ``(init, apply)`` for an algorithm described by ``spec``.

  Args:
    model: the Model contract.
    spec: the round's static description.
    mesh: a 1-D mesh with axis ``clients`` to shard clients over (``None``: one device, plain
      ``vmap``). The packed client count must be a multiple of the mesh size.
    donate: donate the server state buffers to the jitted round.

  Returns:
    The :class:`FedAlgorithm`.

  Example:
    >>> alg = build(model, RoundSpec("fedavg", optax.sgd(0.1), optax.sgd(1.0)))
    >>> state = alg.init(params)
    >>> state, diag = alg.apply(state, packed, jax.random.key(0))
  """
  if spec.dp is not None:
    spec.dp.validate()
  step_fn = _make_local_step(model, spec)

  def init(params, dp_key_data=None) -> ServerState:
    clip0 = jnp.float32(spec.dp.l2_clip_norm if spec.dp is not None else 0.0)
    control = _zeros_like(params) if spec.scaffold else ()
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    dp_noise = ()
    if spec.dp is not None:
      if dp_key_data is None:
        raise ValueError("init: a DP round needs dp_key_data from the run's secret streams")
      dp_noise = dp_lib.DpFedAvgAggregator(spec.dp).init(dp_key_data).privatizer
    opt_state = spec.server_optimizer.init(params)
    return ServerState(params, opt_state, jnp.int32(0), control, clip0, dp_noise)

  def local_sums(state, clients, key, axis_name):
    """Per-shard: vmapped local training and this shard's sums (psum'd over devices)."""
    control_in = clients.get("control", ())
    global_params, server_control = state.params, state.control
    if axis_name is not None:
      # Replicated inputs become device-varying carries of the local-training scan.
      varying = lambda t: jax.tree.map(lambda x: jax.lax.pcast(x, (axis_name,), to="varying"), t)  # noqa: E731
      global_params, server_control = varying(global_params), varying(server_control)

    def one(batch, step_mask, cid, ctrl):
      ckey = _client_key(key, cid)
      return _client_update(
        model, spec, step_fn, global_params, batch, step_mask, ckey, server_control, ctrl
      )

    ctrl_axis = 0 if spec.scaffold else None
    deltas, new_control, losses = jax.vmap(one, in_axes=(0, 0, 0, ctrl_axis))(
      clients["batch"], clients["step_mask"], clients["client_id"], control_in
    )
    w = clients["weight"]
    contrib, norms, unclipped, valid = jax.vmap(
      lambda d, wi: _aggregate_client(spec, d, wi, state.l2_clip_norm)
    )(deltas, w)
    real = (w > 0).astype(jnp.float32)
    wsum = jax.tree.map(lambda c: jnp.sum(c, axis=0), contrib)
    if spec.scaffold:
      dctrl = jax.tree.map(
        lambda n, o: (n - o) * real.reshape((-1,) + (1,) * (n.ndim - 1)), new_control, control_in
      )
      control_sum = jax.tree.map(lambda x: jnp.sum(x, axis=0), dctrl)
    else:
      control_sum = ()
    sums = (
      wsum,
      jnp.sum(w),
      jnp.sum(unclipped),
      control_sum,
      jnp.sum(losses * real),
      jnp.sum(real),
      jnp.sum(valid),
    )
    if axis_name is not None:
      sums = jax.lax.psum(sums, axis_name)
    per_client = {"loss": losses, "delta_norm": norms}
    if spec.scaffold:
      per_client["control"] = new_control
    return sums, per_client

  def round_fn(state, packed, key):
    scalars = _default_scalars(packed)
    clients = {k: v for k, v in packed.items() if k != "scalars"}
    if mesh is None:
      sums, per_client = local_sums(state, clients, key, None)
    else:
      sharded = jax.shard_map(
        lambda s, c, k: local_sums(s, c, k, CLIENTS_AXIS),
        mesh=mesh,
        in_specs=(P(), P(CLIENTS_AXIS), P()),
        out_specs=(P(), P(CLIENTS_AXIS)),
      )
      sums, per_client = sharded(state, clients, key)
    new_state, metrics = _server_step(spec, state, sums, key, scalars)
    return new_state, {"metrics": metrics, "clients": per_client}

  apply = jax.jit(round_fn, donate_argnums=(0,) if donate else ())

  jit_step = jax.jit(step_fn)
  jit_server = jax.jit(
    lambda state, sums, key, scalars: _server_step(spec, state, sums, key, scalars)
  )
  jit_aggregate = jax.jit(lambda d, w, c: _aggregate_client(spec, d, w, c))
  jit_control = jax.jit(lambda d, s, c, ci: _scaffold_control(spec, d, s, c, ci))

  def reference_apply(state, packed, key):
    """Plain backend: Python loop over clients, Python loop over real steps (jitted step)."""
    scalars = _default_scalars(packed)
    num = packed["weight"].shape[0]
    wsum = _zeros_like(state.params)
    control_sum = _zeros_like(state.params) if spec.scaffold else ()
    wtotal = unclipped_total = loss_sum = num_real = valid_total = 0.0
    losses_out, norms_out, controls_out = [], [], []
    for c in range(num):
      ckey = _client_key(key, packed["client_id"][c])
      ctrl = jax.tree.map(lambda x, c=c: x[c], packed["control"]) if spec.scaffold else ()
      correction = jax.tree.map(jnp.subtract, state.control, ctrl) if spec.scaffold else ()
      params, opt_state = state.params, spec.client_optimizer.init(state.params)
      losses = []
      for s in range(packed["step_mask"].shape[1]):
        if float(packed["step_mask"][c, s]) == 0.0:
          continue
        batch = {k: v[c, s] for k, v in packed["batch"].items()}
        params, opt_state, loss = jit_step(
          params, opt_state, state.params, batch, jax.random.fold_in(ckey, s), correction
        )
        losses.append(loss)  # Kept on device: no host sync inside the loop.
      delta = jax.tree.map(jnp.subtract, params, state.params)
      w = jnp.float32(packed["weight"][c])
      contrib, norm, unc, valid = jit_aggregate(delta, w, state.l2_clip_norm)
      valid_total += valid
      wsum = jax.tree.map(jnp.add, wsum, contrib)
      real = float(w > 0)
      loss = jnp.sum(jnp.stack(losses)) / len(losses) if losses else jnp.float32(0.0)
      wtotal += w
      unclipped_total += unc
      loss_sum += loss * real
      num_real += real
      losses_out.append(loss)
      norms_out.append(norm)
      if spec.scaffold:
        new_ctrl = jit_control(delta, jnp.float32(len(losses)), state.control, ctrl)
        controls_out.append(new_ctrl)
        control_sum = jax.tree.map(
          lambda t, n, o, r=real: t + (n - o) * r, control_sum, new_ctrl, ctrl
        )
    sums = (
      wsum,
      jnp.float32(wtotal),
      jnp.float32(unclipped_total),
      control_sum,
      jnp.float32(loss_sum),
      jnp.float32(num_real),
      jnp.float32(valid_total),
    )
    new_state, metrics = jit_server(state, sums, key, scalars)
    per_client = {"loss": jnp.asarray(losses_out), "delta_norm": jnp.asarray(norms_out)}
    if spec.scaffold:
      per_client["control"] = jax.tree.map(lambda *xs: jnp.stack(xs), *controls_out)
    return new_state, {"metrics": metrics, "clients": per_client}

  return FedAlgorithm(spec.name, init, apply, reference_apply, spec)


__all__ = [
  "CLIENTS_AXIS",
  "FedAlgorithm",
  "RoundSpec",
  "ServerState",
  "build",
  "make_mesh",
  "shard_packed",
]
