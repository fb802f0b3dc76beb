"""eDP-SGD: the clipped per-example gradient sum without per-example gradients.

Book-keeping ghost clipping (Bu et al. 2022, "mixed ghost norm"), on the Flax Linen layers of
:mod:`trustml.models`:

1. **One forward pass** under ``flax.linen.intercept_methods``: every ``nn.Dense``,
   ``nn.Embed``, ``nn.LayerNorm`` and ``nn.Conv`` ``__call__`` records its input activation
   ``a`` and adds a zero perturbation ``z`` to its output.
2. **One VJP with respect to the perturbations only** (parameters closed over, so no weight
   gradient is formed) gives the per-position output gradients ``g = ∂Σ_j L_j/∂z``. Examples do
   not interact (no batch norm), so row ``i`` of ``g`` is example ``i``'s own output gradient.
3. **Per-example squared norms per parameter leaf** from ``(a, g)``:

   * Dense kernel: ghost norm ``Σ_{t,s} (a_t·a_s)(g_t·g_s)`` when ``T(d_in+d_out) ≤ d_in·d_out``,
     else the per-example ``a_iᵀ g_i`` is materialised (the cheaper of the two, per layer);
     bias ``||Σ_t g_t||²``;
   * Embed table: ``Σ_{t,s} [id_t = id_s] g_t·g_s`` (a ``T×T`` gram masked by token equality;
     a vocab×dim per-example gradient is never formed);
   * LayerNorm, Conv (small): per-example gradients via the layer's own VJP per example.

4. **Clip factors** ``c_i`` (:func:`trustml.privacy.clipping.clip_factors`) and the **clipped
   sum per layer directly** from the stored ``(a, g)``: Dense ``Σ_i c_i a_iᵀ g_i`` as one
   einsum, Embed a scatter-add of ``c_i g_{i,t}`` into the table rows, small layers a tensordot.
   No second backward pass.

Any parameter not covered by a rule — a layer called twice (weight tying, e.g. the causal LM's
``Embed.attend``), a layer whose call has no batch axis, a raw ``self.param``, a Haiku model —
falls back to naive per-example gradients (``vmap(grad)``) for exactly those leaves, with a
warning. The result is the same clipped sum as the naive path (tested).
"""

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from trustml.core.types import Batch, Params
from trustml.privacy import clipping as clipping_lib
from trustml.privacy import per_example

RULE_TYPES = (nn.Dense, nn.Embed, nn.LayerNorm, nn.Conv)
Path = tuple[str, ...]
_warned: set[str] = set()


@dataclasses.dataclass
class _CallRecord:
  path: Path
  module: nn.Module
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  in_dtype: Any
  out_dtype: Any


@dataclasses.dataclass
class _State:
  calls: list = dataclasses.field(default_factory=list)
  other_uses: set = dataclasses.field(default_factory=set)
  perturb: list | None = None  # Per-call perturbation (None = no perturbation for that call).
  inputs: list = dataclasses.field(default_factory=list)


def _make_interceptor(state: _State):
  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if not isinstance(mod, RULE_TYPES) or mod.scope is None:
      return next_fun(*args, **kwargs)
    path = tuple(mod.scope.path)
    if context.method_name == "setup":
      return next_fun(*args, **kwargs)
    if context.method_name != "__call__":
      state.other_uses.add(path)
      return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs.get("inputs")
    out = next_fun(*args, **kwargs)
    idx = len(state.calls)
    state.calls.append(
      _CallRecord(
        path, mod.clone(parent=None), tuple(x.shape), tuple(out.shape), x.dtype, out.dtype
      )
    )
    if state.perturb is not None:
      state.inputs.append(x)
      z = state.perturb[idx]
      if z is not None:
        out = out + z
    return out

  return interceptor


def _flatten(params: Params) -> dict[Path, jax.Array]:
  return flax.traverse_util.flatten_dict(params)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which parameter leaves each recorded layer call covers, and which need the fallback.

  Attributes:
    calls: the recorded layer calls in execution order.
    covered: per call index, the covered leaf paths (empty tuple: not covered).
    uncovered: leaf paths handled by the naive per-example fallback.
  """

  calls: tuple
  covered: tuple
  uncovered: tuple


def plan(loss_fn: Callable[..., jax.Array], params: Params, batch: Batch, rng=None) -> Plan:
  """Traces one forward pass (shapes only) and decides rule coverage.

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> [B]``.
    params: parameters (nested dict).
    batch: the batch (leading axis B).
    rng: dropout key or None.

  Returns:
    The :class:`Plan`.
  """
  state = _State()
  with nn.intercept_methods(_make_interceptor(state)):
    jax.eval_shape(lambda p, b: loss_fn(p, b, rng), params, batch)
  size = batch["weight"].shape[0]
  leaves = _flatten(params)
  counts: dict[Path, int] = {}
  for rec in state.calls:
    counts[rec.path] = counts.get(rec.path, 0) + 1
  covered = []
  done: set[Path] = set()
  for rec in state.calls:
    own = tuple(p for p in leaves if p[: len(rec.path)] == rec.path and len(p) == len(rec.path) + 1)
    ok = (
      counts[rec.path] == 1
      and rec.path not in state.other_uses
      and len(rec.in_shape) >= 1
      and len(rec.out_shape) >= 2
      and rec.in_shape[0] == size
      and rec.out_shape[0] == size
      and bool(own)
    )
    if isinstance(rec.module, nn.Embed):
      ok = ok and jnp.issubdtype(rec.in_dtype, jnp.integer)
    if isinstance(rec.module, nn.Dense):
      ok = ok and set(k[-1] for k in own) <= {"kernel", "bias"}
    covered.append(own if ok else ())
    if ok:
      done.update(own)
  uncovered = tuple(p for p in leaves if p not in done)
  return Plan(tuple(state.calls), tuple(covered), uncovered)


def _warn_fallback(uncovered: tuple) -> None:
  names = ", ".join("/".join(p) for p in uncovered)
  if names not in _warned:
    _warned.add(names)
    logging.warning(
      "eDP-SGD: no ghost-norm rule covers %s; using naive per-example gradients (vmap) for "
      "these parameters (correct, but slower and more memory).",
      names,
    )


def _dense_sq(a, g, has_bias):
  b = a.shape[0]
  dt = jnp.promote_types(jnp.promote_types(a.dtype, g.dtype), jnp.float32)
  a = a.reshape(b, -1, a.shape[-1]).astype(dt)
  g = g.reshape(b, -1, g.shape[-1]).astype(dt)
  t, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
  if t == 1:
    kernel = jnp.sum(a[:, 0] ** 2, -1) * jnp.sum(g[:, 0] ** 2, -1)
  elif t * (d_in + d_out) <= d_in * d_out:
    aa = jnp.einsum("btd,bsd->bts", a, a)
    gg = jnp.einsum("btd,bsd->bts", g, g)
    kernel = jnp.sum(aa * gg, axis=(1, 2))
  else:
    kernel = jnp.sum(jnp.square(jnp.einsum("btd,bte->bde", a, g)), axis=(1, 2))
  out = {"kernel": kernel}
  if has_bias:
    out["bias"] = jnp.sum(jnp.square(g.sum(1)), -1)
  return out


def _dense_sum(a, g, f_kernel, f_bias):
  b = a.shape[0]
  a = a.reshape(b, -1, a.shape[-1])
  g = g.reshape(b, -1, g.shape[-1])
  out = {"kernel": jnp.einsum("btd,bte->de", a * f_kernel[:, None, None].astype(a.dtype), g)}
  if f_bias is not None:
    out["bias"] = jnp.einsum("bte,b->e", g, f_bias.astype(g.dtype))
  return out


def _embed_sq(ids, g):
  b = ids.shape[0]
  ids = ids.reshape(b, -1)
  g = g.reshape(b, ids.shape[1], -1).astype(jnp.promote_types(g.dtype, jnp.float32))
  if ids.shape[1] == 1:
    return jnp.sum(g[:, 0] ** 2, -1)
  gg = jnp.einsum("btd,bsd->bts", g, g)
  same = ids[:, :, None] == ids[:, None, :]
  return jnp.sum(jnp.where(same, gg, 0.0), axis=(1, 2))


def _embed_sum(ids, g, factor, table_shape, dtype):
  b = ids.shape[0]
  ids = ids.reshape(-1)
  rows = (g.reshape(b, -1, g.shape[-1]) * factor[:, None, None].astype(g.dtype)).reshape(
    -1, g.shape[-1]
  )
  return jnp.zeros(table_shape, dtype).at[ids].add(rows.astype(dtype))


def _generic_per_example(module: nn.Module, layer_params, a, g):
  """Per-example gradients of a small layer's params from its input and output gradient."""

  def one(a_i, g_i):
    _, vjp = jax.vjp(lambda p: module.apply({"params": p}, a_i[None]), layer_params)
    return vjp(g_i[None].astype(jnp.result_type(g_i)))[0]

  return jax.vmap(one)(a, g)


def clipped_sum(
  loss_fn: Callable[..., jax.Array],
  params: Params,
  batch: Batch,
  l2_clip_norm: jax.typing.ArrayLike,
  *,
  clipping: str = "flat",
  rng: jax.Array | None = None,
) -> tuple[Params, Mapping[str, jax.Array]]:
  """Sum of per-example clipped gradients by book-keeping ghost clipping.

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> [B]`` weighted per-example losses (the Model's
      ``per_example_loss``); examples must not interact in the forward pass.
    params: parameters (nested dict, e.g. Flax ``params``).
    batch: batch with leading axis B and ``weight`` ``[B]`` (0 = padding).
    l2_clip_norm: C > 0.
    clipping: ``"flat"`` or ``"per_layer"`` (equal budget split, see
      :mod:`trustml.privacy.clipping`).
    rng: dropout key or None.

  Returns:
    ``(sum_of_clipped_grads, stats)`` with ``stats`` as in
    :func:`trustml.privacy.clipping.clip_factors` plus ``loss_sum`` (over valid examples).

  Formal guarantees:
    Identical to :func:`trustml.privacy.clipping.clipped_sum` on the same batch: each example's
    contribution is its exact gradient scaled by ``c_i`` with norm ≤ C (add/remove-one
    sensitivity C); padding and non-finite examples contribute 0. Requires that example i's
    loss depends only on example i's inputs (true for the trustml models; not for batch norm).
  """
  pl = plan(loss_fn, params, batch, rng)
  if pl.uncovered:
    _warn_fallback(pl.uncovered)
  leaves = _flatten(params)
  perturb = [
    jnp.zeros(rec.out_shape, rec.out_dtype) if cov else None
    for rec, cov in zip(pl.calls, pl.covered, strict=True)
  ]

  def forward(zs):
    state = _State(perturb=zs)
    with nn.intercept_methods(_make_interceptor(state)):
      losses = loss_fn(params, batch, rng)
    return losses.sum(), (losses, state.inputs)

  _, vjp_fn, (losses, inputs) = jax.vjp(forward, perturb, has_aux=True)
  (grads_out,) = vjp_fn(jnp.ones((), losses.dtype))

  # Per-example squared norms per leaf.
  sq: dict[Path, jax.Array] = {}
  materialised: dict[Path, jax.Array] = {}
  for idx, (rec, cov) in enumerate(zip(pl.calls, pl.covered, strict=True)):
    if not cov:
      continue
    a, g = inputs[idx], grads_out[idx]
    mod = rec.module
    if isinstance(mod, nn.Dense):
      has_bias = rec.path + ("bias",) in cov
      for name, val in _dense_sq(a, g, has_bias).items():
        sq[rec.path + (name,)] = val
    elif isinstance(mod, nn.Embed):
      sq[rec.path + ("embedding",)] = _embed_sq(a, g)
    else:
      layer_params = {p[-1]: leaves[p] for p in cov}
      pe = _generic_per_example(mod, layer_params, a, g)
      for name, val in pe.items():
        materialised[rec.path + (name,)] = val
        sq[rec.path + (name,)] = jnp.sum(jnp.square(val.reshape(val.shape[0], -1)), 1)

  if pl.uncovered:
    unc = pl.uncovered

    def select(p):
      flat = _flatten(p)
      return {"/".join(k): flat[k] for k in unc}

    def merge(p, s):
      flat = dict(_flatten(p))
      for k in unc:
        flat[k] = s["/".join(k)]
      return flax.traverse_util.unflatten_dict(flat)

    pe = per_example.per_example_grads_subset(loss_fn, params, batch, select, merge, rng)
    for k in unc:
      val = pe["/".join(k)]
      materialised[k] = val
      sq[k] = jnp.sum(jnp.square(val.reshape(val.shape[0], -1)), 1)

  order = list(leaves)
  factors_list, stats = clipping_lib.clip_factors(
    [sq[k] for k in order], l2_clip_norm, batch["weight"], clipping
  )
  factors = dict(zip(order, factors_list, strict=True))
  valid = stats["valid"]

  out: dict[Path, jax.Array] = {}
  for idx, (rec, cov) in enumerate(zip(pl.calls, pl.covered, strict=True)):
    if not cov:
      continue
    mod = rec.module
    if isinstance(mod, nn.Dense):
      a = clipping_lib.zero_invalid(inputs[idx], valid)
      g = clipping_lib.zero_invalid(grads_out[idx], valid)
      bias_key = rec.path + ("bias",)
      res = _dense_sum(
        a, g, factors[rec.path + ("kernel",)], factors[bias_key] if bias_key in cov else None
      )
      for name, val in res.items():
        out[rec.path + (name,)] = val.astype(leaves[rec.path + (name,)].dtype)
    elif isinstance(mod, nn.Embed):
      key = rec.path + ("embedding",)
      g = clipping_lib.zero_invalid(grads_out[idx], valid)
      out[key] = _embed_sum(inputs[idx], g, factors[key], leaves[key].shape, leaves[key].dtype)
  for k, val in materialised.items():
    f = factors[k]
    out[k] = jnp.tensordot(f.astype(val.dtype), clipping_lib.zero_invalid(val, f > 0), axes=(0, 0))
  stats = dict(stats)
  stats["loss_sum"] = jnp.where(valid, losses, 0.0).sum()
  return flax.traverse_util.unflatten_dict({k: out[k] for k in order}), stats


__all__ = ["Plan", "RULE_TYPES", "clipped_sum", "plan"]
