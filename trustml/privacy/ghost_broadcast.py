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
   the examples); anything else (a gather at data-dependent ids, a ``while``, ``cond`` or
   custom-derivative call that mixes them) makes the leaves *unsupported*, and
   :mod:`trustml.privacy.ghost` falls back to per-example copies under ``vmap``. ``jit`` /
   ``closed_call`` bodies are inlined; ``checkpoint`` (``nn.remat``) bodies are interpreted
   inside ``jax.checkpoint`` again (the kernel sites' inputs leave them as extra outputs); ``scan`` bodies (``nn.scan``, ``nn.RNN``, ``lax.scan``, up
   to :data:`MAX_SCAN_LENGTH` iterations) are analysed iteration by iteration (a leaf passed
   as ``xs`` is sliced into rows, each row a kernel of its own; a leaf closed over is one
   kernel used at every step) and run as a ``lax.scan`` again whose extra ``xs`` are the
   iterations' perturbations and extra ``ys`` the kernel sites' inputs. The batch axis of
   each site is the one output axis whose size follows the batch
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
# Longest ``scan`` the walker interprets iteration by iteration (its sites are then per
# iteration); a longer scan that mixes parameters with example data falls back.
MAX_SCAN_LENGTH = 256
# Forward pass: keep a scan rolled when its iterations have the same sites (else unrolled).
ROLL_SCANS = True


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
  # A kernel site (the operand is a residual leaf itself, or one row of it sliced by a scan,
  # its only use a dot_general): the perturbation is on the dot's output and the layer rule's
  # ghost norm applies; ``(leaf index, kernel side 0/1, dimension_numbers, x_shape,
  # kernel_shape, row)`` with ``row`` None for the whole leaf, else the leaf's row along axis 0.
  rule: tuple | None = None
  # Inside scans: per enclosing scan, outermost first, ``(ordinal among the scans of its
  # body, iteration)``; the forward pass groups a scan's sites by iteration with it.
  iters: tuple = ()


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
  index: int | None = None  # dot sites: the operand is row ``index`` of the leaf (a scan's xs).
  lookup: bool = False  # A row gather of a table leaf at example-dependent ids.
  iters: tuple = ()  # As ``Site.iters``.


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
    # id(value) -> (residual leaf index, row or None): the leaves, and (analyse) the rows a
    # scan slices from a leaf it takes as ``xs`` (kept alive in ``_rows`` so ids stay unique).
    self.direct: dict[int, tuple[int, int | None]] = {}
    self._rows: list = []
    self.iters: list[tuple[int, int]] = []  # The enclosing scans' (ordinal, iteration).
    self.rule_inputs: list = []  # forward: the example operand of each kernel site.
    self.remat = 0  # Depth of checkpoint bodies being interpreted.
    self.rolling = 0  # Depth of rolled scan bodies being traced (forward).
    # forward: per whole-leaf kernel site of a rolled top-level scan, (its site index at each
    # iteration 0..n-1, the scan's stacked inputs [n, *x_shape]).
    self.stacks: list[tuple[tuple, Any]] = []

  def run(self, jaxpr, consts, args, taints, top: bool = True):
    env: dict = {}
    tenv: dict = {}
    origin: dict = {}  # Parameter-only broadcast_in_dim output -> (operand var, dims).
    scans = 0  # Scans of this body interpreted so far (their ordinal in ``iters``).

    def read(v):
      return (v.val, _NO_TAINT) if isinstance(v, jex.Literal) else (env[v], tenv[v])

    for v, c in zip(jaxpr.constvars, consts, strict=True):
      env[v], tenv[v] = c, _NO_TAINT
    for v, a, t in zip(jaxpr.invars, args, taints, strict=True):
      env[v], tenv[v] = a, t
      if top and len(t[0]) == 1 and not t[1]:
        self.direct[id(a)] = (next(iter(t[0])), None)
    for eqn in jaxpr.eqns:
      pairs = [read(v) for v in eqn.invars]
      vals = [p[0] for p in pairs]
      ts = [p[1] for p in pairs]
      leaves = frozenset().union(*(t[0] for t in ts))
      data = any(t[1] for t in ts)
      inner = _inner(eqn) if leaves and data else None
      in_remat = inner is not None and eqn.primitive.name in ("checkpoint", "remat", "remat2")
      self.remat += in_remat
      if leaves and data and _unrollable(eqn):
        outs, out_ts = self._scan(eqn, vals, ts, scans)
        scans += 1
      elif inner is not None and eqn.primitive.name == "remat2" and self.mode == "forward":
        box = []

        def body(*args, inner=inner, ts=ts, box=box):
          # The kernel sites' inputs inside the body leave it as extra outputs (the norms
          # need them; the body's other activations are still recomputed).
          saved, self.rule_inputs = self.rule_inputs, []
          try:
            outs, out_ts = self.run(inner[0], inner[1], list(args), ts, top=False)
            inputs = self.rule_inputs
          finally:
            self.rule_inputs = saved
          box.append(out_ts)
          return outs, inputs

        remat = jax.checkpoint(
          body, prevent_cse=eqn.params["prevent_cse"], policy=eqn.params["policy"]
        )
        outs, inputs = remat(*vals)
        self.rule_inputs.extend(inputs)
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
          elif _row_gather(eqn, ts):
            dot_out = self._gather_site(eqn, vals, ts)
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

  def _scan(self, eqn, vals, ts, ordinal: int):
    """A ``scan`` that mixes parameters with example data, interpreted iteration by iteration.

    Every iteration runs the body through this walker (its sites are found, perturbed or
    collected per iteration), so the carry's taint is exact at each step and no fixpoint is
    needed; the ``ys`` are stacked as the scan stacks them. A leaf passed as ``xs`` (the
    parameters of ``nn.scan(..., variable_axes={"params": 0})``) is sliced row by row, and a
    row used as a kernel is a kernel site of that row (its ghost norm adds over the rows: they
    are disjoint coordinates of the leaf). In forward mode, when every iteration has the same
    sites, the loop stays a ``lax.scan`` (:meth:`_rolled`); otherwise it is unrolled.
    """
    body, n, nc, ncar, order, tcar = _scan_parts(eqn, ts)
    if self.mode == "forward" and ROLL_SCANS:
      rolled = self._rolled(eqn, vals, ts, ordinal, tcar)
      if rolled is not None:
        return rolled
    consts, carry, xs = vals[:nc], list(vals[nc : nc + ncar]), vals[nc + ncar :]
    tcon, txs = list(ts[:nc]), list(ts[nc + ncar :])
    steps: dict[int, list] = {}
    ys_ts: list | None = None
    for i in order:
      x_i = [self._row(x, i, t) for x, t in zip(xs, txs, strict=True)]
      self.iters.append((ordinal, i))
      outs, out_ts = self.run(
        body.jaxpr, body.consts, [*consts, *carry, *x_i], [*tcon, *tcar, *txs], top=False
      )
      self.iters.pop()
      carry, tcar = list(outs[:ncar]), list(out_ts[:ncar])
      steps[i] = list(outs[ncar:])
      y_ts = list(out_ts[ncar:])
      ys_ts = (
        y_ts
        if ys_ts is None
        else [(a[0] | b[0], a[1] or b[1]) for a, b in zip(ys_ts, y_ts, strict=True)]
      )
    ys = []
    for k in range(len(body.jaxpr.outvars) - ncar):
      col = [steps[i][k] for i in range(n)]
      ys.append(None if any(c is None for c in col) else jnp.stack(col))
    return [*carry, *ys], [*tcar, *(ys_ts or [])]

  def _rolled(self, eqn, vals, ts, ordinal: int, tcar: list) -> tuple[list, list] | None:
    """Forward mode: the scan as a ``lax.scan`` whose body perturbs one iteration's sites.

    The sites were found iteration by iteration; when every iteration has the same sites
    (equal up to a stacked kernel's row) and every carry depends on the examples (so each
    iteration's taints are the same), the perturbations are stacked into extra ``xs`` and the
    kernel sites' inputs returned as extra ``ys``. An unrolled recurrence would let XLA:CPU
    fuse elementwise chains across iterations (an LSTM over 64 steps: 7 s vs 0.4 s plain).
    Returns None when the iterations differ (the caller unrolls). ``tcar``: the carries'
    taints on entry (:func:`_carry_taint`).
    """
    body, n, nc, ncar, order, _ = _scan_parts(eqn, ts)
    if not all(t[1] for t in tcar):
      return None
    d = len(self.iters)
    blocks: dict[int, tuple[int, int]] = {}
    k = self.k
    for i in order:
      start = k
      while k < len(self.sites) and len(self.sites[k].iters) > d:
        if self.sites[k].iters[d] != (ordinal, i):
          break
        k += 1
      blocks[i] = (start, k)
    first, end = blocks[0]
    m = end - first

    def key(site):
      rule = None if site.rule is None else site.rule[:-1]
      return dataclasses.replace(site, rule=rule, iters=site.iters[d + 1 :])

    for s0, e0 in blocks.values():
      if e0 - s0 != m or any(
        key(self.sites[s0 + j]) != key(self.sites[first + j]) for j in range(m)
      ):
        return None
    local = self.sites[first:end]
    z_xs = [jnp.stack([self.zs[blocks[i][0] + j] for i in range(n)]) for j in range(m)]
    consts, carry, xs = vals[:nc], vals[nc : nc + ncar], vals[nc + ncar :]
    in_ts = [*ts[:nc], *tcar, *ts[nc + ncar :]]
    box: list = []

    def step(c, x):
      xs_i, z_i = x
      saved = (self.sites, self.zs, self.k, self.rule_inputs)
      self.sites, self.zs, self.k, self.rule_inputs = local, list(z_i), 0, []
      self.iters.append((ordinal, 0))
      self.rolling += 1
      try:
        outs, out_ts = self.run(body.jaxpr, body.consts, [*consts, *c, *xs_i], in_ts, top=False)
        if self.k != m:
          raise AssertionError(f"scan body met {self.k} sites, the analysis {m}")
        inputs = self.rule_inputs
      finally:
        self.rolling -= 1
        self.iters.pop()
        self.sites, self.zs, self.k, self.rule_inputs = saved
      box.append(out_ts)
      return list(outs[:ncar]), (list(outs[ncar:]), inputs)

    carry, (ys, inputs) = jax.lax.scan(
      step,
      list(carry),
      (list(xs), z_xs),
      length=n,
      reverse=bool(eqn.params["reverse"]),
      unroll=eqn.params.get("unroll", 1),
    )
    for i in order:
      self.rule_inputs.extend(x[i] for x in inputs)
    kernel_at = [j for j, site in enumerate(local) if site.rule is not None]
    for j, x in zip(kernel_at, inputs, strict=True):
      rule = local[j].rule
      if not self.rolling and not self.remat and rule[-1] is None and rule[1] != "lookup":
        self.stacks.append((tuple(blocks[i][0] + j for i in range(n)), x))
    self.k = max(e for _, e in blocks.values())
    return [*carry, *ys], box[0]

  def _gather_site(self, eqn, vals, ts):
    """A table leaf gathered at example-dependent ids (``table[ids]``, ``jnp.take``).

    The gather's output is perturbed and its ids recorded: the lookup rule
    (:func:`trustml.privacy.ghost_rules.table_sq`, ``table_sum``) gives the table's ghost norm
    and clipped sum from the ids and the output gradient, with no per-example copy of the
    table. Only a whole leaf (not a value computed from it) has
    this form; otherwise its leaves are unsupported (there is no expanded form of a gather).

    Returns the perturbed output in forward mode, None otherwise.
    """
    table, ids = vals
    if self.mode == "analyse":
      d = self.direct.get(id(table))
      if d is None or d[1] is not None:
        self.bad.update(ts[0][0])
        return None
      out = eqn.outvars[0].aval
      n = len(out.shape) - 1
      axes = frozenset(a for a in range(n) if out.shape[a] == self.batch_size)
      self.seen.append(
        _Seen(
          axes,
          tuple(eqn.invars[0].aval.shape),
          tuple(out.shape),
          out.dtype,
          tuple(eqn.invars[0].aval.shape),
          None,
          dot=True,
          leaves=ts[0][0],
          direct=d[0],
          dot_info=("lookup", str(eqn.params["mode"]), tuple(eqn.invars[1].aval.shape)),
          lookup=True,
          iters=tuple(self.iters),
        )
      )
      return None
    self.k += 1
    if self.mode == "chain":
      return None
    self.rule_inputs.append(ids)
    return _bind(eqn, vals)[0] + self.zs[self.k - 1]

  def _row(self, x, i: int, taint):
    """Row ``i`` of a scan's ``xs`` operand (None stays None: chain mode's example values)."""
    if x is None:
      return None
    row = jax.lax.index_in_dim(x, i, 0, keepdims=False)
    d = self.direct.get(id(x))
    if self.mode == "analyse" and d is not None and d[1] is None:
      if taint[0] == frozenset({d[0]}) and not taint[1]:
        self.direct[id(row)] = (d[0], i)
        self._rows.append(row)
    return row

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
      # Inside a checkpoint body too: the product's input leaves it as an extra output.
      direct = self.direct.get(id(u))
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
          direct=None if direct is None else direct[0],
          dot_info=(j, dnums, shape),
          index=None if direct is None else direct[1],
          iters=tuple(self.iters),
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
      seen = _Seen(
        axes,
        u_shape,
        out_shape,
        var.aval.dtype,
        w_shape,
        dims,
        leaves=leaves,
        iters=tuple(self.iters),
      )
      self.seen.append(seen)
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


def _row_gather(eqn, ts) -> bool:
  """A ``gather`` of whole rows of a parameter-only 2-D table at example-dependent ids."""
  if eqn.primitive.name != "gather":
    return False
  (lt, ld), (it, idata) = ts
  if not lt or ld or not idata or it:
    return False
  table, ids = (v.aval for v in eqn.invars)
  dn = eqn.params["dimension_numbers"]
  out_rank = len(eqn.outvars[0].aval.shape)
  return (
    _is_float(table.dtype)
    and len(table.shape) == 2
    and jnp.issubdtype(ids.dtype, jnp.integer)
    and len(ids.shape) >= 2
    and ids.shape[-1] == 1
    and tuple(dn.offset_dims) == (out_rank - 1,)
    and tuple(dn.collapsed_slice_dims) == (0,)
    and tuple(dn.start_index_map) == (0,)
    and not tuple(getattr(dn, "operand_batching_dims", ()))
    and tuple(eqn.params["slice_sizes"]) == (1, table.shape[1])
  )


def _scan_parts(eqn, ts) -> tuple:
  """``(body, length, num_consts, num_carry, iteration order, carry taints on entry)``."""
  p = eqn.params
  n, nc, ncar = int(p["length"]), int(p["num_consts"]), int(p["num_carry"])
  order = list(reversed(range(n))) if p["reverse"] else list(range(n))
  carry = zip(ts[nc : nc + ncar], eqn.invars[nc : nc + ncar], strict=True)
  return p["jaxpr"], n, nc, ncar, order, [_carry_taint(t, v) for t, v in carry]


def _carry_taint(taint, var) -> tuple[frozenset, bool]:
  """A scan carry's taint on entry. A float array carry that depends on nothing (an RNN's zero
  initial state, ``[B, H]``) is taken as example data: a parameter meeting it then forms a site
  along its batch axis (a constant row per example; its products with a kernel contribute
  exactly what they are), and every iteration has the same taints. Integer and scalar carries
  (step counters) keep theirs."""
  aval = var.aval
  if taint == _NO_TAINT and _is_float(aval.dtype) and len(aval.shape) >= 1:
    return (frozenset(), True)
  return taint


def _unrollable(eqn) -> bool:
  """A ``scan`` the walker interprets iteration by iteration."""
  if eqn.primitive.name != "scan":
    return False
  n = int(eqn.params["length"])
  return 0 < n <= MAX_SCAN_LENGTH and isinstance(eqn.params["jaxpr"], jex.ClosedJaxpr)


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
    rule = (seen.direct, j, dnums, x_shape, seen.u_shape, seen.index)
    return Site(-1, seen.out_shape, seen.dtype, seen.u_shape, (), axis, rule, seen.iters)
  if seen.dot:
    dims = seen.broadcast_dims
    return Site(0, (size, *seen.u_shape), seen.dtype, seen.u_shape, dims, axis, iters=seen.iters)
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
  return Site(axis, shape, seen.dtype, seen.operand_shape, dims, iters=seen.iters)


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
  rows: dict[int, set] = {}  # Leaf -> whether its kernel uses are rows (a scan's xs) or whole.
  lookups: dict[int, set] = {}  # Leaf -> whether each of its uses is a table lookup.
  for seen in first:
    for i in seen.leaves:
      ok = seen.dot and seen.direct == i and len(seen.leaves) == 1
      kernel[i] = kernel.get(i, True) and ok
      rows.setdefault(i, set()).add(seen.index is None)
      lookups.setdefault(i, set()).add(seen.lookup)
  kernel = {i: ok and len(rows[i]) == 1 for i, ok in kernel.items()}
  if any(True in kinds and (len(kinds) > 1 or not kernel[i]) for i, kinds in lookups.items()):
    return None  # A table gathered and also used otherwise: no rule (the vmap fallback).
  sites = []
  for a, b in zip(first, second, strict=True):
    axes = a.axes & b.axes
    if len(axes) != 1 or a.broadcast_dims != b.broadcast_dims:
      return None
    if a.dot != b.dot or a.index != b.index or a.iters != b.iters:
      return None
    is_kernel = a.dot and a.direct is not None and kernel.get(a.direct, False)
    if (
      is_kernel and not a.lookup
    ):  # The einsum rule must express the product (else: the expanded form).
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
    The flattened outputs, the example-side operand of each kernel site (in order), and the
    stacked form of the kernel sites of rolled scans: ``(site indices per iteration, inputs
    [n, *x_shape])`` per whole-leaf kernel of the scan body (its iterations' inputs are also
    in the second list, one slice per site).
  """
  walker = _Walker("forward", 0, sites, zs)
  outs = walker.run(closed.jaxpr, closed.consts, flat_args, taints)[0]
  return outs, walker.rule_inputs, walker.stacks


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
