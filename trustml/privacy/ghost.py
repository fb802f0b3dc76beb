"""eDP-SGD: the clipped per-example gradient sum in one forward and one backward pass.

Book-keeping ghost clipping (Bu et al. 2022, "mixed ghost norm") on any Flax Linen model:

1. **Plan** (shapes only): one traced forward under ``flax.linen.intercept_methods`` records
   every call of a layer with a rule (``nn.Dense``, ``nn.DenseGeneral`` — hence
   ``nn.MultiHeadDotProductAttention`` —, ``nn.Einsum``, ``nn.Conv``, ``nn.Embed.__call__`` and
   ``nn.Embed.attend``, ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``) and maps each
   parameter leaf to its uses (:mod:`trustml.privacy.ghost_rules`). A leaf with a rule for
   every use is *covered*; every other leaf (a raw ``self.param`` read directly and
   broadcast, a layer called without a batch axis, an unknown layer) is *residual*.
2. **One VJP** with respect to zero perturbations added to the outputs of the recorded calls
   (parameters closed over: no weight gradient is formed) gives each call's output gradient
   ``g``; row ``i`` is example ``i``'s own gradient (examples do not interact). A call's rule
   applies only if its leading axis follows the batch size (traced at B and B + 1). Residual
   leaves that reach the examples only through broadcasting (a raw ``self.param`` added or
   multiplied, a bias, an ``Embed`` at constant positions) or through products (a raw kernel,
   ``x @ w`` or any einsum: the einsum rule on the product's input and output gradient; a
   kernel computed from parameters: expanded per example) get their per-example gradients or
   norms from the same batched VJP, at perturbations of those operands
   (:mod:`trustml.privacy.ghost_broadcast`; also inside ``nn.remat`` bodies and ``scan``
   bodies: ``nn.scan`` stacks, ``nn.RNN`` cells, a raw ``lax.scan``). Any other residual leaf
   (a table gathered at data-dependent ids, a ``while`` loop or ``cond`` mixing parameters with
   examples, a scan longer than ``ghost_broadcast.MAX_SCAN_LENGTH``, a layer with no rule)
   gets a per-example copy ``P[i] = p``: the forward then runs per example under
   ``vmap`` and the same VJP returns ``∂L_i/∂P[i]`` (correct, slower); the warning names each
   such leaf and the memory its copies cost.
3. **Per-example squared norms** per leaf from the recorded ``(x, g)``; **clip factors** from
   :func:`trustml.privacy.clipping.clip_factors`; the **clipped sum** per leaf directly from
   ``(x, g)`` (one einsum per kernel, one scatter-add per table).

The result equals the naive ``vmap(grad)`` clipped sum (float64 oracle tests).
"""

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import tracers as flax_tracers

from trustml.core import validation
from trustml.core.types import Batch, Params
from trustml.privacy import clipping as clipping_lib
from trustml.privacy import ghost_broadcast, ghost_nnx
from trustml.privacy import ghost_rules as rules

SMALL_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)
RULE_TYPES = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Embed, nn.Conv, *SMALL_TYPES)
Path = tuple[str, ...]
_warned: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Small:
  """A normalisation layer's leaves: per-example gradients from its normalised input
  (standard ``LayerNorm`` / ``RMSNorm``) or from the layer's own VJP (other forms)."""

  paths: tuple
  module: Any


@dataclasses.dataclass
class _Call:
  path: Path
  module: Any
  method: str
  kwargs: dict
  in_shape: tuple
  in_dtype: Any
  out_shape: tuple
  out_dtype: Any


@dataclasses.dataclass
class _State:
  calls: list = dataclasses.field(default_factory=list)
  other_uses: set = dataclasses.field(default_factory=set)
  perturb: list | None = None  # Per call: a zero perturbation of its output, or None.
  inputs: list = dataclasses.field(default_factory=list)
  active: list = dataclasses.field(default_factory=list)  # Paths inside a recorded call.
  base_trace: Any = None  # The trace the loss is called under (set by ``_intercepting``).


def _interceptor(state: _State):
  def intercept(next_fun, args, kwargs, context):
    mod = context.module
    if not isinstance(mod, RULE_TYPES) or mod.scope is None or context.method_name == "setup":
      return next_fun(*args, **kwargs)
    path = tuple(mod.scope.path)
    method = context.method_name
    if path in state.active:  # A helper method called by the layer itself.
      return next_fun(*args, **kwargs)
    if method not in ("__call__", "attend") or (
      method == "attend" and not isinstance(mod, nn.Embed)
    ):
      state.other_uses.add(path)
      return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs.get("inputs", kwargs.get("query"))
    extra = {k: v for k, v in kwargs.items() if k == "einsum_str"}
    if len(args) > 1 and isinstance(mod, nn.Einsum):
      extra["einsum_str"] = args[1]
    return record(state, path, mod.clone(parent=None), method, extra, x, args, kwargs, next_fun)

  return intercept


def record(state: _State, path, module, method, extra, x, args, kwargs, call_fn):
  """Runs one layer call, recording it (and perturbing its output in the forward pass).

  A call made under a transformation nested inside the model (``nn.scan``, ``nn.remat``,
  ``nn.RNN``, ``nn.vmap``, a ``lax.scan`` body...) is not recorded: its input and output are
  tracers of that inner trace, which a rule cannot use outside it. Its layer's leaves become
  residual: the jaxpr sites cover them inside ``checkpoint`` and ``scan`` bodies (see
  :mod:`trustml.privacy.ghost_broadcast`); elsewhere (``nn.vmap``, ``while``) they take
  per-example copies (correct, slower; the warning names them).
  """
  if flax_tracers.current_trace() != state.base_trace:
    state.other_uses.add(path)
    return call_fn(*args, **kwargs)
  state.active.append(path)
  try:
    out = call_fn(*args, **kwargs)
  finally:
    state.active.pop()
  idx = len(state.calls)
  state.calls.append(_Call(path, module, method, extra, x.shape, x.dtype, out.shape, out.dtype))
  if state.perturb is not None:
    state.inputs.append(x)
    if state.perturb[idx] is not None:
      out = out + state.perturb[idx]
  return out


@contextlib.contextmanager
def _intercepting(state: _State, params: Params):
  """Records rule-layer calls of Linen (intercept_methods) and NNX (patched) layers."""
  state.base_trace = flax_tracers.current_trace()
  with nn.intercept_methods(_interceptor(state)), ghost_nnx.patched(state, params, record):
    yield


def _name(path: Path) -> str:
  return "/".join(str(k) for k in path)


def _flatten(params: Params) -> dict[Path, jax.Array]:
  return flax.traverse_util.flatten_dict(params)


def _call_uses(call: _Call, leaves: Mapping[Path, jax.Array], size: int) -> list | None:
  """The rule uses of one recorded call, or None (its leaves become residual)."""
  if ghost_nnx.is_nnx(call.module):
    return ghost_nnx.call_uses(call, leaves, size)
  own = {p[-1]: p for p in leaves if p[:-1] == call.path}
  mod, x_shape = call.module, call.in_shape
  if not own or not x_shape or x_shape[0] != size or call.out_shape[:1] != (size,):
    return None
  bias = own.get("bias")
  bias_shape = None if bias is None else leaves[bias].shape
  if isinstance(mod, nn.Embed):
    if set(own) != {"embedding"}:
      return None
    if call.method == "attend":
      return [rules.Attend(own["embedding"])] if len(x_shape) >= 2 else None
    ok = jnp.issubdtype(call.in_dtype, jnp.integer)
    return [rules.Lookup(own["embedding"])] if ok else None
  if isinstance(mod, SMALL_TYPES):
    return [Small(tuple(own.values()), mod)]
  if "kernel" not in own or set(own) - {"kernel", "bias"}:
    return None
  kshape = leaves[own["kernel"]].shape
  if isinstance(mod, nn.Dense):
    eq = rules.dense_equation(len(x_shape))
  elif isinstance(mod, nn.DenseGeneral):
    if mod.batch_dims not in ((), None):
      return None
    axis = (mod.axis,) if isinstance(mod.axis, int) else tuple(mod.axis)
    axis = tuple(a % len(x_shape) for a in axis)
    if 0 in axis:
      return None
    feats = (mod.features,) if isinstance(mod.features, int) else tuple(mod.features)
    eq = rules.dense_general_equation(len(x_shape), axis, len(feats))
  elif isinstance(mod, nn.Einsum):
    eq = call.kwargs.get("einsum_str") or mod.einsum_str
    if eq is None:
      return None
  elif type(mod) is nn.Conv:
    return rules.conv_layer_uses(
      call.path,
      x_shape,
      kshape,
      padding=mod.padding,
      strides=mod.strides,
      input_dilation=mod.input_dilation,
      kernel_dilation=mod.kernel_dilation,
      feature_group_count=mod.feature_group_count,
      masked=mod.mask is not None,
      bias=bias,
    )
  else:
    return None
  return rules.einsum_uses(call.path, eq, x_shape, kshape, bias, bias_shape)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Rule coverage of a model's parameter leaves.

  Attributes:
    calls: recorded layer calls, in execution order.
    uses: per call, its rule uses of covered leaves (empty: the call is not perturbed).
    uncovered: residual leaves (per-example copies under ``vmap``; see the module docstring).
    broadcast: residual leaves whose every use is a broadcast site
      (:mod:`trustml.privacy.ghost_broadcast`): per-example gradients from the batched VJP.
    sites: those sites, in interpretation order (empty when ``broadcast`` is).
  """

  calls: tuple
  uses: tuple
  uncovered: tuple
  broadcast: tuple = ()
  sites: tuple = ()


def _trace_calls(loss_fn, params: Params, batch, rng) -> _State:
  state = _State()

  def traced(p, b):
    with _intercepting(state, p):
      return loss_fn(p, b, rng)

  jax.eval_shape(traced, params, batch)
  return state


def _resized(batch, n: int):
  return jax.tree.map(lambda v: jax.ShapeDtypeStruct((n,) + tuple(v.shape[1:]), v.dtype), batch)


def _forward_fn(loss_fn, params: Params, rng, residual: tuple) -> Callable:
  """``f(zs, res, batch) -> (loss_sum, losses, recorded inputs)``: the perturbed batched forward."""
  leaves = _flatten(params)

  def f(zs, res, batch):
    flat = dict(leaves)
    flat.update(zip(residual, res, strict=True))
    p = flax.traverse_util.unflatten_dict(flat)
    state = _State(perturb=list(zs))
    with _intercepting(state, p):
      losses = loss_fn(p, batch, rng)
    return losses.sum(), losses, state.inputs

  return f


def _taints(zs, res, batch) -> list:
  data = (frozenset(), True)
  return (
    [data] * len(jax.tree.leaves(zs))
    + [(frozenset({i}), False) for i in range(len(res))]
    + [data] * len(jax.tree.leaves(batch))
  )


def _perturbations(calls, uses, struct: bool) -> list:
  make = jax.ShapeDtypeStruct if struct else jnp.zeros
  return [make(c.out_shape, c.out_dtype) if u else None for c, u in zip(calls, uses, strict=True)]


def plan(loss_fn: Callable[..., jax.Array], params: Params, batch: Batch, rng=None) -> Plan:
  """Traces the forward pass (shapes only) and decides which leaves the rules cover.

  The forward is traced at the batch size B and at B + 1: a layer call's rule applies only
  if its input's and output's leading axes follow the batch size (a layer applied to a
  position axis that happens to equal B is not taken for a per-example call).

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> [B]``.
    params: parameters (nested dict).
    batch: the batch (leading axis B).
    rng: dropout key or None.

  Returns:
    The :class:`Plan`.
  """
  state = _trace_calls(loss_fn, params, batch, rng)
  size = batch["weight"].shape[0]
  try:
    bigger = _trace_calls(loss_fn, params, _resized(batch, size + 1), rng).calls
  except Exception:  # noqa: BLE001 - a model that only runs at B: no call is trusted.
    bigger = None
  if bigger is not None and len(bigger) != len(state.calls):
    bigger = None
  leaves = _flatten(params)
  per_call = []
  for i, c in enumerate(state.calls):
    follows = bigger is not None and (
      bigger[i].in_shape[:1] == (size + 1,) and bigger[i].out_shape[:1] == (size + 1,)
    )
    per_call.append(_call_uses(c, leaves, size) if follows else None)
  # A layer also used where no rule sees it (a nested transform, another method): no rule.
  bad: set[Path] = {p for p in leaves if p[:-1] in state.other_uses}
  for call, uses in zip(state.calls, per_call, strict=True):
    if uses is None or call.path in state.other_uses:
      bad.update(p for p in leaves if p[:-1] == call.path)
  kinds: dict[Path, set] = {}
  for uses in per_call:
    for u in uses or ():
      for p in u.paths if isinstance(u, Small) else (u.path,):
        kinds.setdefault(p, set()).add(type(u))
  for p, k in kinds.items():  # A leaf mixing a lookup with a dense form: no rule.
    if (k & {rules.Lookup, rules.Attend}) and (k - {rules.Lookup, rules.Attend}):
      bad.add(p)
  covered = set(kinds) - bad

  def keep(u):
    return all(p in covered for p in u.paths) if isinstance(u, Small) else u.path in covered

  uses = tuple(tuple(u for u in (us or ()) if keep(u)) for us in per_call)
  uncovered = tuple(p for p in leaves if p not in covered)
  calls = tuple(state.calls)
  if not uncovered:
    return Plan(calls, uses, ())
  f = _forward_fn(loss_fn, params, rng, uncovered)

  def args_at(n):
    # Without a trace at B + 1 no call has a rule (uses all empty): the shapes do not matter.
    cs = calls if n == size or bigger is None else bigger
    res = [jax.ShapeDtypeStruct(leaves[p].shape, leaves[p].dtype) for p in uncovered]
    return _perturbations(cs, uses, True), res, _resized(batch, n)

  zs, res, b = args_at(size)
  sites = ghost_broadcast.analyse(f, args_at, _taints(zs, res, b), size)
  if sites is None:
    return Plan(calls, uses, uncovered)
  return Plan(calls, uses, (), uncovered, sites)


def _warn_residual(uncovered: tuple, leaves: Mapping, size: int) -> None:
  parts = []
  for p in uncovered:
    n = int(np.prod(leaves[p].shape))
    parts.append(f"{_name(p)} ({size} x {n} floats = {size * n * 4 / 2**20:.1f} MB)")
  names = ", ".join(parts)
  if names not in _warned:
    _warned.add(names)
    logging.warning(
      "eDP-SGD: no ghost-norm rule covers %s; their per-example gradients are materialised "
      "(per-example parameter copies, forward under vmap, one backward: correct; extra memory "
      "as listed; ghost.fallback_cost measures the extra time, and the DP trainer reports it "
      "at start-up as privacy/ghost_fallback).",
      names,
    )


def _run(loss_fn, params, batch, rng, pl: Plan):
  """One forward + one VJP: losses, recorded inputs, output gradients, residual gradients."""
  leaves = _flatten(params)
  size = batch["weight"].shape[0]
  zs = _perturbations(pl.calls, pl.uses, False)
  if pl.broadcast:
    return _run_broadcast(loss_fn, params, batch, rng, pl, zs)
  res = {_name(p): jnp.broadcast_to(leaves[p], (size,) + leaves[p].shape) for p in pl.uncovered}

  def batched(zs, res):
    del res
    _, losses, inputs = _forward_fn(loss_fn, params, rng, ())(zs, [], batch)
    return losses.sum(), (losses, inputs)

  def one(z_i, res_i, ex_i, index):
    flat = dict(leaves)
    for p in pl.uncovered:
      flat[p] = res_i[_name(p)]
    p_i = flax.traverse_util.unflatten_dict(flat)
    key = None if rng is None else jax.random.fold_in(rng, index)
    state = _State(perturb=[None if z is None else z[None] for z in z_i])
    with _intercepting(state, p_i):
      loss = loss_fn(p_i, jax.tree.map(lambda v: v[None], ex_i), key)[0]
    return loss, [x[0] for x in state.inputs]

  def vmapped(zs, res):
    losses, inputs = jax.vmap(one)(zs, res, batch, jnp.arange(size))
    return losses.sum(), (losses, inputs)

  forward = vmapped if pl.uncovered else batched
  _, vjp_fn, (losses, inputs) = jax.vjp(forward, zs, res, has_aux=True)
  grads_out, res_grads = vjp_fn(jnp.ones((), losses.dtype))
  return losses, inputs, grads_out, {p: res_grads[_name(p)] for p in pl.uncovered}, []


def _run_broadcast(loss_fn, params, batch, rng, pl: Plan, zs: list):
  """The batched forward with the broadcast sites perturbed; per-example residual gradients."""
  leaves = _flatten(params)
  res = [leaves[p] for p in pl.broadcast]
  f = _forward_fn(loss_fn, params, rng, pl.broadcast)
  closed, out_shape = jax.make_jaxpr(f, return_shape=True)(zs, res, batch)
  tree = jax.tree.structure(out_shape)
  taints = _taints(zs, res, batch)

  stack_sites: list = []  # Per stacked kernel of a rolled scan: its site index per iteration.

  def forward(zs, site_zs):
    flat = jax.tree.leaves((zs, res, batch))
    outs, kernel_xs, stacks = ghost_broadcast.forward(closed, flat, taints, pl.sites, site_zs)
    _, losses, inputs = jax.tree.unflatten(tree, outs)
    stack_sites[:] = [idx for idx, _ in stacks]
    return losses.sum(), (losses, inputs, kernel_xs, [x for _, x in stacks])

  # Kernel sites (a raw leaf in a dot_general) get the layer rule from their (x, g); every
  # other leaf its per-example gradient through the parameter-only chain.
  kernel_leaves = {s.rule[0] for s in pl.sites if s.rule is not None}
  chain_idx = [i for i in range(len(res)) if i not in kernel_leaves]

  def chain(r_sub):
    r = list(res)
    for i, v in zip(chain_idx, r_sub, strict=True):
      r[i] = v
    return ghost_broadcast.operands(closed, jax.tree.leaves((zs, r, batch)), taints, pl.sites)

  site_zs = [jnp.zeros(s.shape, s.dtype) for s in pl.sites]
  _, vjp_fn, (losses, inputs, kernel_xs, stack_xs) = jax.vjp(forward, zs, site_zs, has_aux=True)
  grads_out, site_grads = vjp_fn(jnp.ones((), losses.dtype))
  others = [(s, g) for s, g in zip(pl.sites, site_grads, strict=True) if s.rule is None]
  per_example = {}
  if chain_idx:
    grads = ghost_broadcast.per_example_grads(
      chain, [res[i] for i in chain_idx], [s for s, _ in others], [g for _, g in others]
    )
    per_example = {pl.broadcast[i]: g for i, g in zip(chain_idx, grads, strict=True)}
  # A kernel of a rolled scan body: its iterations' inputs and output gradients stacked
  # ``[n, ...]`` (the scan's own layout), not its n per-iteration sites.
  in_stacks = {k for idx in stack_sites for k in idx}
  kernels = [
    (
      pl.broadcast[pl.sites[idx[0]].rule[0]],
      pl.sites[idx[0]],
      x,
      jnp.stack([site_grads[k] for k in idx]),
      True,
    )
    for idx, x in zip(stack_sites, stack_xs, strict=True)
  ]
  at = [k for k, s in enumerate(pl.sites) if s.rule is not None]
  for k, x in zip(at, kernel_xs, strict=True):
    if k not in in_stacks:
      s = pl.sites[k]
      kernels.append((pl.broadcast[s.rule[0]], s, x, site_grads[k], False))
  return losses, inputs, grads_out, per_example, kernels


def _small_per_example(module, layer_params: dict, x: jax.Array, g: jax.Array) -> dict:
  def one(x_i, g_i):
    _, vjp = jax.vjp(lambda p: module.apply({"params": p}, x_i[None]), layer_params)
    return vjp(g_i[None])[0]

  return jax.vmap(one)(x, g)


def _norm_per_example(module, layer_params: dict, x: jax.Array, g: jax.Array) -> dict | None:
  """Per-example gradients of a standard ``LayerNorm`` / ``RMSNorm`` from its normalised input.

  ``y = x̂ · scale + bias`` with ``x̂`` the layer's own output at unit scale and zero bias (Flax
  computes it: same statistics, epsilon and variance formula), so ``∂scale_i = Σ_t g_{i,t} ⊙
  x̂_{i,t}`` and ``∂bias_i = Σ_t g_{i,t}`` (sums over every axis but the batch and the
  features): one normalisation instead of the layer's per-example VJP (a second forward and
  backward of the normalisation, under ``vmap``). None for other configurations (reductions
  or features over other axes, cross-device statistics): the VJP path then runs.
  """
  if type(module) not in (nn.LayerNorm, nn.RMSNorm) or module.axis_name is not None:
    return None
  if module.reduction_axes not in (-1, (-1,)) or module.feature_axes not in (-1, (-1,)):
    return None
  if set(layer_params) - {"scale", "bias"} or x.ndim < 2:
    return None
  unit = {
    k: jnp.ones_like(v) if k == "scale" else jnp.zeros_like(v) for k, v in layer_params.items()
  }
  xhat = module.apply({"params": unit}, x)
  axes = tuple(range(1, x.ndim - 1))
  dt = jnp.promote_types(g.dtype, jnp.float32)
  out = {}
  if "scale" in layer_params:
    out["scale"] = jnp.sum(g.astype(dt) * xhat.astype(dt), axes).astype(g.dtype)
  if "bias" in layer_params:
    out["bias"] = jnp.sum(g.astype(dt), axes).astype(g.dtype)
  return out


def _table(tables: dict, path: Path) -> dict:
  """The lookup / attend uses gathered so far of table ``path`` (lists of ids, g, x, dl)."""
  return tables.setdefault(path, {"ids": [], "g": [], "x": [], "dl": []})


def _materialised(factors: list, valid: jax.Array) -> tuple[list, jax.Array]:
  """The ``[B]`` clip factors and validity, computed once before the weighted sums.

  XLA:CPU otherwise fuses the whole norm -> factor chain (clamps, sums, sqrt, division,
  finiteness) into every per-element loop that consumes it (each element of the scaled
  patches recomputed it: the CNN's clipped sum took ~2x longer). ``optimization_barrier`` is
  expanded away on CPU; a reduction is a fusion root, so the chain ends in a (trivial) max.
  """
  stacked = jnp.stack([*factors, valid.astype(factors[0].dtype)])[..., None]
  stacked = jnp.max(jnp.concatenate([stacked, jnp.full_like(stacked, -jnp.inf)], -1), -1)
  return list(stacked[:-1]), stacked[-1] > 0


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
    clipping: ``"flat"`` or ``"per_layer"`` (see :mod:`trustml.privacy.clipping`).
    rng: dropout key or None (with residual leaves example ``i`` uses ``fold_in(rng, i)``).

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
  leaves = _flatten(params)
  size = batch["weight"].shape[0]
  if pl.uncovered:
    _warn_residual(pl.uncovered, leaves, size)
  losses, inputs, grads_out, materialised, kernels = _run(loss_fn, params, batch, rng, pl)

  bilinear: dict[Path, dict] = {}  # path -> signature -> ([xe], [ge], to_leaf)
  tables: dict[Path, dict] = {}
  for idx, uses in enumerate(pl.uses):
    x, g = inputs[idx], grads_out[idx]
    for u in uses:
      if isinstance(u, rules.Bilinear):
        entry = bilinear.setdefault(u.path, {}).setdefault(u.signature, ([], [], u.to_leaf, [], []))
        entry[0].append(u.x_fn(x))
        entry[1].append(u.g_fn(g))
        entry[3].append(None if u.gram_fn is None else (u.gram_fn, x))
        entry[4].append(None if u.sum_fn is None else (u.sum_fn, x, g))
      elif isinstance(u, rules.Lookup):
        _table(tables, u.path)["ids"].append(x.reshape(size, -1))
        tables[u.path]["g"].append(g.reshape(size, -1, g.shape[-1]))
      elif isinstance(u, rules.Attend):
        _table(tables, u.path)["x"].append(x.reshape(size, -1, x.shape[-1]))
        tables[u.path]["dl"].append(g.reshape(size, -1, g.shape[-1]))
      elif isinstance(u, rules.Reduce):
        val = u.fn(g)
        materialised[u.path] = materialised[u.path] + val if u.path in materialised else val
      else:  # Small
        layer_params = {p[-1]: leaves[p] for p in u.paths}
        if ghost_nnx.is_nnx(u.module):
          pe = ghost_nnx.small_per_example(u.module, layer_params, x, g)
        else:
          pe = _norm_per_example(u.module, layer_params, x, g)
          if pe is None:
            pe = _small_per_example(u.module, layer_params, x, g)
        for p in u.paths:
          val = pe[p[-1]]
          materialised[p] = materialised[p] + val if p in materialised else val

  # Raw kernels in dot_general: the einsum rule. A row of a leaf (a scan's xs slice) is its
  # own kernel: rows are disjoint coordinates, so the leaf's norm² is the sum over its rows.
  by_row: dict[Path, dict[int, dict]] = {}
  # path -> [(index of the use in its bilinear entry, xe [n, B, T, H, I], ge)]: rolled scans.
  stacked_uses: dict[Path, list] = {}
  for path, site, x, g, is_stack in kernels:
    _, side, dnums, x_shape, k_shape, row = site.rule
    if is_stack:  # One kernel at every iteration of a rolled scan: the uses along T.
      u = rules.dot_general_use(path, dnums, side, x_shape, k_shape, site.data_axis)
      xn, gn = jax.vmap(u.x_fn)(x), jax.vmap(u.g_fn)(g)
      entry = bilinear.setdefault(path, {}).setdefault(u.signature, ([], [], u.to_leaf, [], []))
      for v, n_ in ((xn, 0), (gn, 1)):  # For the norm: [B, n·T, H, I], example-major.
        moved = jnp.moveaxis(v, 0, 1)
        entry[n_].append(moved.reshape((size, -1) + moved.shape[3:]))
      entry[3].append(None)
      entry[4].append(None)
      stacked_uses.setdefault(path, []).append((len(entry[0]) - 1, xn, gn))
      continue
    if side == "lookup":  # table[ids] at example ids: the lookup rule (``dnums``: the mode).
      rows_n = leaves[path].shape[0]
      ids = jnp.moveaxis(x[..., 0], site.data_axis, 0).reshape(size, -1)
      gl = jnp.moveaxis(g, site.data_axis, 0).reshape(size, -1, g.shape[-1])
      if "CLIP" not in dnums:  # Fill / drop: an out-of-range id reads fill, its gradient is 0.
        inside = (ids >= 0) & (ids < rows_n)
        gl = jnp.where(inside[..., None], gl, jnp.zeros((), gl.dtype))
      ids = jnp.clip(ids, 0, rows_n - 1)
      _table(tables, path)["ids"].append(ids)
      tables[path]["g"].append(gl)
      continue
    u = rules.dot_general_use(path, dnums, side, x_shape, k_shape, site.data_axis)
    forms = bilinear.setdefault(path, {}) if row is None else by_row.setdefault(path, {})
    forms = forms if row is None else forms.setdefault(row, {})
    entry = forms.setdefault(u.signature, ([], [], u.to_leaf, [], []))
    entry[0].append(u.x_fn(x))
    entry[1].append(u.g_fn(g))
    entry[3].append(None)
    entry[4].append(None)
  row_kernels: dict[Path, dict[int, tuple]] = {}  # path -> row -> (xe, ge, to_leaf)
  for path, rows_of in by_row.items():
    if all(len(forms) == 1 for forms in rows_of.values()):
      row_kernels[path] = {}
      for r, forms in rows_of.items():
        ((xs, gs, to_leaf, _, _),) = forms.values()
        row_kernels[path][r] = (jnp.concatenate(xs, 1), jnp.concatenate(gs, 1), to_leaf)
      continue
    leaf = leaves[path]  # Several einsum forms of one row: materialise every row.
    pe = [jnp.zeros((size, *leaf.shape[1:]), leaf.dtype)] * leaf.shape[0]
    for r, forms in rows_of.items():
      total = 0.0
      for xs, gs, to_leaf, _, _ in forms.values():
        total = total + to_leaf(
          rules.bilinear_per_example(jnp.concatenate(xs, 1), jnp.concatenate(gs, 1))
        )
      pe[r] = jnp.reshape(total, (size, *leaf.shape[1:]))
    materialised[path] = jnp.stack(pe, 1)

  ghost: dict[Path, tuple] = {}
  split_sums: dict[Path, tuple] = {}
  for path, forms in bilinear.items():
    if len(forms) == 1:
      ((xs, gs, to_leaf, grams, sums),) = forms.values()
      xx = grams[0][0](grams[0][1]) if len(xs) == 1 and grams[0] is not None else None
      sums = sums if all(sm is not None for sm in sums) else None
      ghost[path] = (jnp.concatenate(xs, 1), jnp.concatenate(gs, 1), to_leaf, xx, sums)
      if path in stacked_uses:  # The sum: rolled-scan uses in the scan's [n, B, ...] layout.
        at = {k for k, _, _ in stacked_uses[path]}
        rest = [k for k in range(len(xs)) if k not in at]
        flat = (
          (jnp.concatenate([xs[k] for k in rest], 1), jnp.concatenate([gs[k] for k in rest], 1))
          if rest
          else None
        )
        split_sums[path] = (flat, [(xn, gn) for _, xn, gn in stacked_uses[path]])
    else:  # Several einsum forms of one kernel: materialise each form's sum.
      total = 0.0
      for xs, gs, to_leaf, _, _ in forms.values():
        pe = rules.bilinear_per_example(jnp.concatenate(xs, 1), jnp.concatenate(gs, 1))
        total = total + to_leaf(pe)
      materialised[path] = total
  tab = {
    p: tuple(jnp.concatenate(v[k], 1) if v[k] else None for k in ("ids", "g", "x", "dl"))
    for p, v in tables.items()
  }

  sq: dict[Path, jax.Array] = {}
  for p, (xe, ge, _, xx, _) in ghost.items():
    sq[p] = rules.bilinear_sq(xe, ge, xx)
  for p, t in tab.items():
    sq[p] = rules.table_sq(*t, table_rows=leaves[p].shape[0])
  for p, rows_of in row_kernels.items():
    sq[p] = sum(rules.bilinear_sq(xe, ge) for xe, ge, _ in rows_of.values())
  for p, val in materialised.items():
    val = val.astype(jnp.promote_types(val.dtype, jnp.float32))
    sq[p] = jnp.sum(jnp.square(val.reshape(size, -1)), 1)

  order = list(leaves)
  factors_list, stats = clipping_lib.clip_factors(
    [sq[k] for k in order], l2_clip_norm, batch["weight"], clipping
  )
  factors_list, valid = _materialised(factors_list, stats["valid"])
  factors = dict(zip(order, factors_list, strict=True))

  def clipped_sums() -> dict[Path, jax.Array]:
    """The clipped sums, the inputs of invalid examples zeroed first (NaN · 0)."""

    def zero(v):
      return v if v is None else clipping_lib.zero_invalid(v, valid)

    out: dict[Path, jax.Array] = {}
    for p, (xe, ge, to_leaf, _, rule_sums) in ghost.items():
      if p in split_sums:  # Σ_i c_i Σ_t x_tᵀg_t over the rows of [n, B, T, ...] as they are.
        flat, parts = split_sums[p]
        total = (
          0.0 if flat is None else rules.bilinear_sum(zero(flat[0]), zero(flat[1]), factors[p])
        )
        for xn, gn in parts:
          n = xn.shape[0]
          ok = jnp.tile(valid, n)
          xr, gr = (clipping_lib.zero_invalid(v.reshape((-1,) + v.shape[2:]), ok) for v in (xn, gn))
          total = total + rules.bilinear_sum(xr, gr, jnp.tile(factors[p], n))
        out[p] = to_leaf(total)
      elif rule_sums is None:
        out[p] = to_leaf(rules.bilinear_sum(zero(xe), zero(ge), factors[p]))
      else:  # The rule's own sum (sum_fn) at the scaled output gradients, over its uses.
        f = factors[p]
        out[p] = sum(
          fn(zero(x), zero(g) * f.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1)))
          for fn, x, g in rule_sums
        )
    for p, rows_of in row_kernels.items():
      leaf = leaves[p]
      row_sums = []
      for r in range(leaf.shape[0]):  # A row no iteration used has gradient 0.
        if r in rows_of:
          xe, ge, to_leaf = rows_of[r]
          row = to_leaf(rules.bilinear_sum(zero(xe), zero(ge), factors[p]))
          row_sums.append(jnp.reshape(row, leaf.shape[1:]).astype(leaf.dtype))
        else:
          row_sums.append(jnp.zeros(leaf.shape[1:], leaf.dtype))
      out[p] = jnp.stack(row_sums)
    for p, (ids, g, x, dl) in tab.items():
      out[p] = rules.table_sum(
        ids, zero(g), zero(x), zero(dl), factors[p], leaves[p].shape, leaves[p].dtype
      )
    for p, val in materialised.items():
      val = zero(val)
      out[p] = jnp.tensordot(factors[p].astype(val.dtype), val, axes=(0, 0))
    return out

  # Padding and clipped examples are finite and get factor 0 or c_i; a non-finite example
  # (NaN/inf anywhere in its inputs or output gradients, hence in its squared norm) must have
  # its rows zeroed (NaN · 0 = NaN). The select runs in every batch: fused into the factor's
  # scaling on the narrow side, one pass on the wide side. A lax.cond that ran it only in
  # batches holding such an example cost more than it saved on XLA:CPU: the conditional's
  # operands (every recorded input and output gradient) were copied into it, +525 MB at the
  # peak and 1.22x instead of 1.02x the plain step (transformer B = 256, T = 64).
  out = clipped_sums()
  out = {k: out[k].astype(leaves[k].dtype).reshape(leaves[k].shape) for k in order}
  stats = dict(stats)
  stats["loss_sum"] = jnp.where(valid, losses, 0.0).sum()
  return flax.traverse_util.unflatten_dict(out), stats


def fallback_cost(
  loss_fn: Callable[..., jax.Array],
  params: Params,
  batch: Batch,
  *,
  l2_clip_norm: float = 1.0,
  reps: int = 3,
  measure: bool = True,
) -> dict[str, Any]:
  """Which leaves take the per-example fallback, and what it costs, measured on ``batch``.

  Compiles and times (medians of ``reps`` after one warm-up call) the eDP clipped sum
  (:func:`clipped_sum`) against the plain batched gradient of the mean loss on the same
  batch. Only shapes matter for the timing: pass a synthetic batch, not private data. When no
  leaf falls back nothing is compiled.

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> [B]`` weighted per-example losses.
    params: parameters (arrays).
    batch: one (micro-)batch with ``weight`` ``[B]``.
    l2_clip_norm: clip norm used in the timed step.
    reps: timed calls per variant.
    measure: False: only the leaves and the memory of their copies (no compilation).

  Returns:
    ``{"leaves": [names], "copies_mb": float}`` and, with ``measure`` and a fallback,
    ``"edp_step_s"``, ``"plain_step_s"``, ``"ratio"`` (eDP / plain).

  Raises:
    ConfigError: ``l2_clip_norm`` not > 0 or ``reps`` not a positive int (before any trace).
  """
  validation.positive("l2_clip_norm", l2_clip_norm)
  validation.positive_int("reps", reps)
  pl = plan(loss_fn, params, batch)
  leaves = _flatten(params)
  size = batch["weight"].shape[0]
  out: dict[str, Any] = {
    "leaves": [_name(p) for p in pl.uncovered],
    "copies_mb": sum(size * int(np.prod(leaves[p].shape)) * 4 for p in pl.uncovered) / 2**20,
  }
  if not pl.uncovered or not measure:
    return out
  edp = jax.jit(lambda p, b: clipped_sum(loss_fn, p, b, l2_clip_norm)[0])
  plain = jax.jit(jax.grad(lambda p, b: jnp.sum(loss_fn(p, b, None)) / b["weight"].shape[0]))

  def median(fn) -> float:
    jax.block_until_ready(fn(params, batch))
    times = []
    for _ in range(reps):
      t = time.perf_counter()
      jax.block_until_ready(fn(params, batch))
      times.append(time.perf_counter() - t)
    return float(np.median(times))

  out["plain_step_s"] = median(plain)
  out["edp_step_s"] = median(edp)
  out["ratio"] = out["edp_step_s"] / out["plain_step_s"]
  return out


__all__ = ["Plan", "RULE_TYPES", "SMALL_TYPES", "clipped_sum", "fallback_cost", "plan"]
