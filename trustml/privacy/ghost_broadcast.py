"""Per-example gradients of parameters used with broadcasting, from one batched backward.

A parameter read directly inside a model — a raw ``self.param`` positional table added as
``x + pos[None, :t]``, a learned scale ``x * s``, a bias ``logits + b``, PReLU's slope, an
``nn.Embed`` looked up at constant positions ``embed(jnp.arange(t))`` — reaches the
examples through one operation: an elementwise op (``add``, ``mul``, ``select_n``, …) whose
other operand carries the batch axis, while the parameter-side operand ``u = h(p)`` has size 1
along it (or is a scalar, or a ``broadcast_in_dim`` of a value without it). No layer rule sees
it, and its per-example gradient is not visible in the batched backward, because ``u`` is
shared by all rows.

This module finds those *sites* in the model's jaxpr and makes them visible:

1. **Analysis** (tracing only). The batched forward is traced to a jaxpr and interpreted with a
   *taint* per value: which residual leaves it depends on, and whether it depends on the
   examples (the batch, the perturbations of the recorded layer calls). A value that depends on
   leaves but not on the examples is *parameter-only*. Every equation that mixes a
   parameter-only float operand with example data must be an elementwise op whose
   parameter-only operand can be expanded along the batch axis, or a ``dot_general`` whose
   example operand keeps its batch axis free (a raw kernel, ``x @ w`` or any einsum: a *kernel
   site* when the operand is the leaf itself, its output gradient then feeding the einsum
   rule's ghost norm; else the operand is expanded per example and the product batched over
   the examples); anything else (a gather at data-dependent ids, a scan or custom-derivative
   call that mixes them) makes the leaves *unsupported*, and :mod:`trustml.privacy.ghost`
   falls back to per-example copies under ``vmap``. ``jit`` / ``closed_call`` bodies are inlined;
   ``checkpoint`` (``nn.remat``) bodies are interpreted inside ``jax.checkpoint`` again. The batch axis of each site is the one output axis whose size follows the batch
   size: the analysis runs at ``B`` and at ``B + 1`` and the two site lists must agree (a
   feature axis that happens to equal ``B`` is not taken for the batch axis).
2. **Forward.** At each site the operand is expanded along the batch axis and a zero
   perturbation ``z_k`` of that shape is added, so the batched VJP (the same one that gives the
   recorded layers' output gradients) returns ``G_k = ∂Σ_j L_j/∂z_k``; its row ``i`` is example
   ``i``'s cotangent of the operand (examples do not interact).
3. **Per-example gradients.** Row ``i`` of ``G_k``, summed over the axes the expansion
   broadcast, is example ``i``'s cotangent of the parameter-side value ``w_k = h_k(p)``; the
   VJP of the parameter-only chain ``p ↦ (w_1, …, w_K)`` (slices, casts, constant-index
   lookups, ``softplus`` …; it sees no example data) under ``vmap`` over ``i`` gives
   ``∂L_i/∂p`` for every residual leaf, summed over all its sites. No second backward through
   the model and no ``vmap`` of the model.

The result equals the naive ``vmap(grad)`` per-example gradient (float64 oracle tests in
``tests/privacy/test_ghost.py``).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp

from trustml.privacy import ghost_rules

# Elementwise primitives that broadcast size-1 (and rank-0) operands implicitly.
_ELEMENTWISE = frozenset({
  "add", "sub", "mul", "div", "max", "min", "pow", "atan2", "rem", "nextafter", "select_n",
  "add_any", "and", "or", "xor", "eq", "ne", "lt", "le", "gt", "ge",
})  # fmt: skip
_NO_TAINT: tuple[frozenset, bool] = (frozenset(), False)


@dataclasses.dataclass(frozen=True)
class Site:
  """One parameter-only operand expanded along the batch axis.

  Attributes:
    axis: the batch axis of the expanded operand.
    shape: the expanded operand's shape (the perturbation's shape).
    dtype: its dtype.
    operand_shape: the shape of the parameter-side value ``w`` whose cotangent is taken.
    broadcast_dims: where ``w``'s axes sit in ``shape`` (``broadcast_in_dim`` semantics).
  """

  axis: int
  shape: tuple
  dtype: Any
  operand_shape: tuple
  broadcast_dims: tuple
  data_axis: int = -1  # dot sites: the batch axis of the example-side operand; -1: elementwise.
  # A kernel site (the operand is a residual leaf itself, its only use a dot_general): the
  # perturbation is on the dot's output and the layer rule's ghost norm applies;
  # ``(leaf index, kernel side 0/1, dimension_numbers, x_shape, kernel_shape)``.
  rule: tuple | None = None


@dataclasses.dataclass
class _Seen:
  """One candidate site recorded by the analysis."""

  axes: frozenset
  u_shape: tuple
  out_shape: tuple
  dtype: Any
  operand_shape: tuple
  broadcast_dims: tuple | None  # None: ``w`` is the operand itself (identity dims).
  dot: bool = False  # A dot_general site: ``axes`` are the example operand's axes.
  leaves: frozenset = frozenset()
  direct: int | None = None  # dot sites: the residual leaf the operand is, if it is one.
  dot_info: tuple = ()  # dot sites: (kernel side, dimension_numbers, x_shape).


def _inner(eqn) -> tuple[Any, Sequence] | None:
  """The body of a call-like equation to inline, as ``(jaxpr, consts)``, or None."""
  name = eqn.primitive.name
  if name in ("jit", "pjit", "closed_call", "core_call"):
    body = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
  elif name in ("checkpoint", "remat", "remat2"):
    body = eqn.params.get("jaxpr")
  else:
    return None
  if isinstance(body, jex.ClosedJaxpr):
    return body.jaxpr, body.consts
  if isinstance(body, jex.Jaxpr) and not body.constvars:
    return body, ()
  return None


def _bind(eqn, invals: list) -> list:
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # JAX before 0.7: (subfuns, params).
    subfuns, params = params
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*subfuns, *invals, **params)
  return list(out) if eqn.primitive.multiple_results else [out]


class _Walker:
  """Interprets a jaxpr with taints; ``mode`` is "analyse", "forward" or "chain".

  * analyse: values are tracers of a shape-only trace; sites are recorded in ``seen``,
    unsupported leaves in ``bad``.
  * forward: ``sites``/``zs`` given; each site's operand is expanded and perturbed.
  * chain: values that depend on the examples are not computed (None); each site's
    parameter-side value ``w`` is collected in ``operands``.
  """

  def __init__(self, mode: str, batch_size: int, sites=None, zs=None):
    self.mode = mode
    self.batch_size = batch_size
    self.sites = sites
    self.zs = zs
    self.seen: list[_Seen] = []
    self.bad: set[int] = set()
    self.operands: list = []
    self.k = 0  # Sites met so far (forward / chain: the index into ``sites``).
    self.direct: dict[int, int] = {}  # id(value) -> residual leaf index, for the leaves.
    self.rule_inputs: list = []  # forward: the example operand of each kernel site.
    self.remat = 0  # Depth of checkpoint bodies being interpreted (no kernel sites inside).

  def run(self, jaxpr, consts, args, taints, top: bool = True):
    env: dict = {}
    tenv: dict = {}
    origin: dict = {}  # Parameter-only broadcast_in_dim output -> (operand var, dims).

    def read(v):
      return (v.val, _NO_TAINT) if isinstance(v, jex.Literal) else (env[v], tenv[v])

    for v, c in zip(jaxpr.constvars, consts, strict=True):
      env[v], tenv[v] = c, _NO_TAINT
    for v, a, t in zip(jaxpr.invars, args, taints, strict=True):
      env[v], tenv[v] = a, t
      if top and len(t[0]) == 1 and not t[1]:
        self.direct[id(a)] = next(iter(t[0]))
    for eqn in jaxpr.eqns:
      pairs = [read(v) for v in eqn.invars]
      vals = [p[0] for p in pairs]
      ts = [p[1] for p in pairs]
      leaves = frozenset().union(*(t[0] for t in ts))
      data = any(t[1] for t in ts)
      inner = _inner(eqn) if leaves and data else None
      in_remat = inner is not None and eqn.primitive.name in ("checkpoint", "remat", "remat2")
      self.remat += in_remat
      if inner is not None and eqn.primitive.name == "remat2" and self.mode == "forward":
        box = []

        def body(*args, inner=inner, ts=ts, box=box):
          outs, out_ts = self.run(inner[0], inner[1], list(args), ts, top=False)
          box.append(out_ts)
          return outs

        remat = jax.checkpoint(
          body, prevent_cse=eqn.params["prevent_cse"], policy=eqn.params["policy"]
        )
        outs = remat(*vals)
        out_ts = box[0]
      elif inner is not None:
        outs, out_ts = self.run(inner[0], inner[1], vals, ts, top=False)
      else:
        dot_out = None  # A dot site's output in forward mode.
        if leaves and data:
          if eqn.primitive.name in _ELEMENTWISE:
            for j, v in enumerate(eqn.invars):
              if ts[j][0] and not ts[j][1]:
                vals[j] = self._site(eqn, j, v, vals, env, origin, ts[j][0])
          elif eqn.primitive.name == "dot_general" and _dot_mix(ts):
            dot_out = self._dot_site(eqn, vals, ts)
          else:
            for j, v in enumerate(eqn.invars):
              if ts[j][0] and not ts[j][1] and _is_float(v.aval.dtype):
                self.bad.update(ts[j][0])
        if dot_out is not None:
          outs = [dot_out]
        elif self.mode == "chain" and data:
          outs = [None] * len(eqn.outvars)
        else:
          outs = _bind(eqn, vals)
        out_ts = [(leaves, data)] * len(eqn.outvars)
        if eqn.primitive.name == "broadcast_in_dim" and leaves and not data:
          origin[eqn.outvars[0]] = (eqn.invars[0], tuple(eqn.params["broadcast_dimensions"]))
      self.remat -= in_remat
      for v, o, t in zip(eqn.outvars, outs, out_ts, strict=True):
        if not isinstance(v, jex.DropVar):
          env[v], tenv[v] = o, t
    return [read(v)[0] for v in jaxpr.outvars], [read(v)[1] for v in jaxpr.outvars]

  def _dot_site(self, eqn, vals, ts):
    """A ``dot_general`` of a parameter-only operand ``u`` with example data ``x``.

    Two forms. A *kernel site*: ``u`` is a residual leaf itself (``x @ w``,
    ``einsum("btd,hde->bthe", x, w)``) and all its uses are such products: the dot's output
    is perturbed, so the batched VJP gives its output gradient and
    :func:`trustml.privacy.ghost_rules.dot_general_use` the layer rule's ghost norm (no
    per-example gradient is formed). Otherwise (``u = h(p)``, e.g. ``x @ softplus(w)``) ``u``
    is expanded to one copy per example, ``[B, *u.shape]``, perturbed, and the product
    becomes a batched ``dot_general`` over the example axis (same FLOPs; the per-example
    cotangents of ``u`` are then pulled back through ``h``).

    Returns the output in forward mode, None otherwise (the equation is then bound as is).
    """
    j = 0 if ts[0][0] and not ts[0][1] else 1  # The parameter-only side.
    u, x = vals[j], vals[1 - j]
    u_var, x_var = eqn.invars[j], eqn.invars[1 - j]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    x_contract, x_batch = (rc, rb) if j == 0 else (lc, lb)
    x_free = [d for d in range(len(x_var.aval.shape)) if d not in x_contract and d not in x_batch]
    if self.mode == "analyse":
      if not _is_float(u_var.aval.dtype):
        return None
      shape = tuple(x_var.aval.shape)
      axes = frozenset(d for d in x_free if shape[d] == self.batch_size)
      u_shape = tuple(u_var.aval.shape)
      if not axes:
        self.bad.update(ts[j][0])
      dims = tuple(range(1, len(u_shape) + 1))
      out = eqn.outvars[0].aval
      dnums = ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))
      self.seen.append(
        _Seen(
          axes,
          u_shape,
          tuple(out.shape),
          out.dtype,
          u_shape,
          dims,
          dot=True,
          leaves=ts[j][0],
          # Inside a checkpoint body the product's input cannot leave it: expanded form.
          direct=None if self.remat else self.direct.get(id(u)),
          dot_info=(j, dnums, shape),
        )
      )
      return None
    site = self.sites[self.k]
    self.k += 1
    if self.mode == "chain":
      if site.rule is None:
        self.operands.append(u)
      return None
    if site.rule is not None:  # Kernel site: the product as it is, its output perturbed.
      self.rule_inputs.append(x)
      return _bind(eqn, vals)[0] + self.zs[self.k - 1]
    a = site.data_axis
    expanded = jax.lax.broadcast_in_dim(u, site.shape, site.broadcast_dims) + self.zs[self.k - 1]
    shift = lambda dims: tuple(d + 1 for d in dims)  # noqa: E731
    u_free = len(u_var.aval.shape) - len(lc if j == 0 else rc) - len(lb)
    if j == 1:  # x @ u: the example axis joins the batch dimensions.
      dnums = ((tuple(lc), shift(rc)), ((a, *lb), (0, *shift(rb))))
      lhs, rhs = x, expanded
      dest = len(lb) + x_free.index(a)
    else:  # u @ x.
      dnums = ((shift(lc), tuple(rc)), ((0, *shift(lb)), (a, *rb)))
      lhs, rhs = expanded, x
      dest = len(lb) + u_free + x_free.index(a)
    out = jax.lax.dot_general(
      lhs,
      rhs,
      dnums,
      precision=eqn.params.get("precision"),
      preferred_element_type=eqn.params.get("preferred_element_type"),
    )
    return jnp.moveaxis(out, 0, dest)

  def _site(self, eqn, j, var, vals, env, origin, leaves):
    """Records (analyse), perturbs (forward) or collects (chain) one site; returns the value."""
    u = vals[j]
    if not _is_float(var.aval.dtype):
      return u  # No gradient flows through it.
    u_shape = tuple(var.aval.shape)
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if var in origin:
      w_var, dims = origin[var]
      w_shape = tuple(w_var.aval.shape)
    else:
      w_var, dims, w_shape = var, None, u_shape
    if self.mode == "analyse":
      axes = _candidate_axes(u_shape, out_shape, w_shape, dims, self.batch_size)
      if not axes or (dims is not None and list(dims) != sorted(dims)):
        self.bad.update(leaves)
      self.seen.append(_Seen(axes, u_shape, out_shape, var.aval.dtype, w_shape, dims))
      return u
    k = self.k
    self.k += 1
    w = env[w_var] if dims is not None else u
    if self.mode == "chain":
      self.operands.append(w)
      return u
    site = self.sites[k]
    expanded = jax.lax.broadcast_in_dim(w, site.shape, site.broadcast_dims)
    return expanded + self.zs[k]


def _dot_mix(ts) -> bool:
  """A dot_general of one parameter-only operand with one example-side operand."""
  (la, da), (lb, db) = ts
  return (bool(la) and not da and db) or (bool(lb) and not db and da)


def _is_float(dtype) -> bool:
  return jnp.issubdtype(dtype, jnp.inexact)


def _candidate_axes(u_shape, out_shape, w_shape, dims, size) -> frozenset:
  """Output axes of size ``size`` along which the parameter-side operand can be expanded."""
  axes = set()
  for d, n in enumerate(out_shape):
    if n != size:
      continue
    if not u_shape:  # A scalar operand.
      axes.add(d)
    elif len(u_shape) != len(out_shape):
      continue
    elif u_shape[d] == 1:
      axes.add(d)
    elif dims is not None and u_shape[d] == size:  # Broadcast explicitly along d.
      if d not in dims or w_shape[dims.index(d)] == 1:
        axes.add(d)
  return frozenset(axes)


def _site(seen: _Seen, axis: int, size: int, kernel: bool = False) -> Site:
  if seen.dot and kernel:
    j, dnums, x_shape = seen.dot_info
    rule = (seen.direct, j, dnums, x_shape, seen.u_shape)
    return Site(-1, seen.out_shape, seen.dtype, seen.u_shape, (), axis, rule)
  if seen.dot:
    return Site(0, (size, *seen.u_shape), seen.dtype, seen.u_shape, seen.broadcast_dims, axis)
  if not seen.u_shape:
    shape = tuple(seen.out_shape[d] if d == axis else 1 for d in range(len(seen.out_shape)))
  else:
    shape = tuple(seen.out_shape[d] if d == axis else n for d, n in enumerate(seen.u_shape))
  if seen.broadcast_dims is not None:
    dims = seen.broadcast_dims
  elif not seen.u_shape:
    dims = ()
  else:
    dims = tuple(range(len(shape)))
  return Site(axis, shape, seen.dtype, seen.operand_shape, dims)


def analyse(
  traced_fn: Callable, args_at: Callable[[int], tuple], taints: Sequence, batch_size: int
) -> tuple[Site, ...] | None:
  """The broadcast sites of ``traced_fn``, or None if some leaf has another kind of use.

  Args:
    traced_fn: the batched forward, ``traced_fn(*args)``.
    args_at: ``args_at(n)`` gives abstract arguments (``jax.ShapeDtypeStruct``) at batch size n.
    taints: per flattened argument, ``(frozenset of residual-leaf ids, depends on examples)``.
    batch_size: B.

  Returns:
    The sites in interpretation order (each with its batch axis), or None.
  """
  found = []
  for n in (batch_size, batch_size + 1):
    walker = _Walker("analyse", n)

    def interpret(*args, walker=walker):
      closed = jax.make_jaxpr(traced_fn)(*args)
      flat = jax.tree.leaves(args)
      return walker.run(closed.jaxpr, closed.consts, flat, taints)[0]

    try:
      jax.eval_shape(interpret, *args_at(n))
    except Exception:  # noqa: BLE001 - a model that cannot run at B + 1: no sites.
      return None
    if walker.bad:
      return None
    found.append(walker.seen)
  first, second = found
  if len(first) != len(second):
    return None
  kernel: dict[int, bool] = {}  # Leaf -> every use of it is a kernel in a dot_general.
  for seen in first:
    for i in seen.leaves:
      ok = seen.dot and seen.direct == i and len(seen.leaves) == 1
      kernel[i] = kernel.get(i, True) and ok
  sites = []
  for a, b in zip(first, second, strict=True):
    axes = a.axes & b.axes
    if len(axes) != 1 or a.broadcast_dims != b.broadcast_dims:
      return None
    if a.dot != b.dot:
      return None
    is_kernel = a.dot and a.direct is not None and kernel.get(a.direct, False)
    if is_kernel:  # The einsum rule must express the product (else: the expanded form).
      j, dnums, x_shape = a.dot_info
      use = ghost_rules.dot_general_use(("w",), dnums, j, x_shape, a.u_shape, min(axes))
      is_kernel = use is not None
    sites.append(_site(a, next(iter(axes)), batch_size, is_kernel))
  return tuple(sites)


def forward(
  closed: Any, flat_args: Sequence, taints: Sequence, sites: Sequence[Site], zs: Sequence
) -> list:
  """Evaluates the traced forward with each site's operand expanded and perturbed by ``zs``.

  Args:
    closed: ``jax.make_jaxpr`` of the batched forward.
    flat_args: its flattened arguments.
    taints: as in :func:`analyse`.
    sites: from :func:`analyse`.
    zs: one zero array of ``site.shape`` per site (the VJP's inputs).

  Returns:
    The flattened outputs, and the example-side operand of each kernel site (in order).
  """
  walker = _Walker("forward", 0, sites, zs)
  outs = walker.run(closed.jaxpr, closed.consts, flat_args, taints)[0]
  return outs, walker.rule_inputs


def operands(closed: Any, flat_args: Sequence, taints: Sequence, sites: Sequence[Site]) -> list:
  """The parameter-side value ``w`` of every site but the kernel sites (parameter-only
  equations only)."""
  walker = _Walker("chain", 0, sites)
  walker.run(closed.jaxpr, closed.consts, flat_args, taints)
  return walker.operands


def per_example_cotangent(site: Site, g: jax.Array) -> jax.Array:
  """Example ``i``'s cotangent of the site's parameter-side value, stacked: ``[B, *w.shape]``.

  Args:
    site: the site.
    g: the perturbation's cotangent, ``site.shape``.

  Returns:
    ``g`` summed over the axes the expansion broadcast, batch axis first.
  """
  dims = site.broadcast_dims
  summed = [
    d
    for d in range(len(site.shape))
    if d != site.axis
    and (d not in dims or (site.operand_shape[dims.index(d)] == 1 and site.shape[d] != 1))
  ]
  g = jnp.sum(g, axis=tuple(summed), keepdims=True) if summed else g
  g = jnp.moveaxis(g, site.axis, 0)
  return g.reshape((site.shape[site.axis],) + tuple(site.operand_shape))


def per_example_grads(
  chain_fn: Callable[[list], list], res: list, sites: Sequence[Site], cotangents: Sequence
) -> list:
  """Per-example gradients ``[B, *leaf.shape]`` of the residual leaves from the sites' cotangents.

  Args:
    chain_fn: ``chain_fn(res) -> [w_k]``, the parameter-only values of the sites.
    res: the residual leaves.
    sites: the sites.
    cotangents: the perturbations' cotangents, one per site.

  Returns:
    One ``[B, *leaf.shape]`` array per residual leaf (summed over all its sites).
  """
  _, vjp_fn = jax.vjp(chain_fn, res)
  rows = [per_example_cotangent(s, g) for s, g in zip(sites, cotangents, strict=True)]
  (grads,) = jax.vmap(lambda r: vjp_fn(list(r)))(rows)
  return list(grads)


__all__ = ["Site", "analyse", "forward", "operands", "per_example_cotangent", "per_example_grads"]
