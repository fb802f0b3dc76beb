"""Ghost-norm rules: per-example squared norms and clipped sums of a layer's parameters.

A rule turns one recorded layer call — its input activation ``x`` and the output gradient
``g = ∂Σ_j L_j/∂out`` (row ``i`` is example ``i``'s own gradient) — into *uses* of parameter
leaves. Every linear layer is written as one einsum form ``x[b, T, H, I] · W[H, I, O] →
out[b, T, H, O]`` (``T`` positions, ``H`` index shared by input, kernel and output, e.g. heads;
``I`` contracted; ``O`` produced), so one rule covers ``nn.Dense``, ``nn.DenseGeneral``,
``nn.Einsum``, ``nn.Conv`` (im2col patches) and their NNX twins:

* per-example gradient ``G_i[h] = Σ_t x_{i,t,h}ᵀ g_{i,t,h}``;
* squared norm by the ghost identity ``Σ_h Σ_{t,s} (x_t·x_s)(g_t·g_s)`` when
  ``T(I + O) ≤ I·O``, else from the materialised ``G_i`` (the cheaper of the two);
* clipped sum ``Σ_i c_i G_i`` as one einsum over the batch and positions.

A leaf used several times (a module called twice, weight tying) is the *sum* of its uses:
uses of one form are concatenated along ``T`` (the ghost identity then includes every cross
term); the tied embedding (``Embed.__call__`` lookups plus ``Embed.attend`` logits) gets the
exact cross term ``2 Σ_{t,s} dl_s[id_t] (g_t·x_s)`` without a vocab × dim gradient per example.
"""

import dataclasses
import string
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trustml.core import conv_layout

_LETTERS = string.ascii_letters


def _acc_dtype(*xs: jax.Array):
  dt = jnp.float32
  for x in xs:
    dt = jnp.promote_types(dt, x.dtype)
  return dt


@dataclasses.dataclass(frozen=True)
class Bilinear:
  """A linear use ``out = x · W`` of kernel leaf ``path`` in einsum form.

  Attributes:
    path: the kernel leaf.
    x_fn: ``x -> [B, T, H, I]``.
    g_fn: ``g -> [B, T, H, O]``.
    to_leaf: ``[..., H, I, O] -> [..., *kernel_shape]`` (leading axes kept).
    signature: uses with equal signatures are concatenated along ``T``.
    gram_fn: optional ``x -> [B, H, T, T]``, the gram ``x_fn(x) x_fn(x)ᵀ`` computed more
      cheaply from ``x`` (1-D convolutions: shifted sums of the input's own gram).
    sum_fn: optional ``(x, g) -> Σ_b Σ_t x_fn(x)ᵀ g_fn(g)`` as the kernel leaf, computed
      without the ``x_fn`` form (convolutions: the layer's own backward-filter convolution,
      instead of a dot over copied im2col patches).
  """

  path: tuple
  x_fn: Callable
  g_fn: Callable
  to_leaf: Callable
  signature: tuple
  gram_fn: Callable | None = None
  sum_fn: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Lookup:
  """An embedding lookup ``out[b, t] = W[ids[b, t]]`` of table leaf ``path``."""

  path: tuple


@dataclasses.dataclass(frozen=True)
class Attend:
  """Logits against an embedding table, ``out = x · Wᵀ`` (``Embed.attend``)."""

  path: tuple


@dataclasses.dataclass(frozen=True)
class Reduce:
  """A leaf whose per-example gradient is a cheap function of ``g`` alone (biases).

  Attributes:
    path: the leaf.
    fn: ``g -> [B, *leaf_shape]``.
  """

  path: tuple
  fn: Callable


def _ellipsis(lhs: str, ndim: int, used: str) -> str:
  """Fresh letters standing for the ellipsis of the input operand ``lhs`` (``ndim`` axes)."""
  if "..." not in lhs:
    return ""
  free = [c for c in _LETTERS if c not in used]
  return "".join(free[: ndim - (len(lhs) - 3)])


def einsum_uses(
  path: Sequence[str],
  equation: str,
  x_shape: tuple,
  kernel_shape: tuple,
  bias: tuple | None = None,
  bias_shape: tuple | None = None,
) -> list | None:
  """The uses of ``out = einsum(equation, x, kernel) (+ bias)``; None if not in einsum form.

  Args:
    path: the layer's parameter path (leaves ``path + ("kernel",)`` and the bias).
    equation: ``"lhs,rhs->out"`` with the input first and the kernel second.
    x_shape: input shape (axis 0 the batch).
    kernel_shape: kernel shape.
    bias: the bias leaf path or None.
    bias_shape: the bias leaf shape.

  Returns:
    A list of :class:`Bilinear` / :class:`Reduce`, or None when the batch axis is not the
    leading axis of input and output or the kernel has an axis the rule cannot express.
  """
  path = tuple(path)
  equation = equation.replace(" ", "")
  ins, out = equation.split("->")
  lhs, rhs = ins.split(",")
  used = lhs.replace(".", "") + rhs + out.replace(".", "")
  ell = _ellipsis(lhs, len(x_shape), used)
  lhs, out = lhs.replace("...", ell), out.replace("...", ell)
  if "." in rhs or len(rhs) != len(kernel_shape) or len(lhs) != len(x_shape):
    return None
  b = lhs[0]
  if not out or out[0] != b or b in rhs or len(set(lhs)) != len(lhs) or len(set(rhs)) != len(rhs):
    return None
  tok = [c for c in lhs[1:] if c in out and c not in rhs]
  heads = [c for c in rhs if c in lhs and c in out]
  cin = [c for c in rhs if c in lhs and c not in out]
  cout = [c for c in rhs if c not in lhs and c in out]
  if len(heads) + len(cin) + len(cout) != len(rhs):
    return None
  sizes = dict(zip(lhs, x_shape, strict=True)) | dict(zip(rhs, kernel_shape, strict=True))
  n_t = int(np.prod([sizes[c] for c in tok])) if tok else 1
  dims = tuple(int(np.prod([sizes[c] for c in grp])) if grp else 1 for grp in (heads, cin, cout))
  h, i, o = dims
  hio = "".join(heads + cin + cout)
  x_eq = f"{lhs}->{b}{''.join(tok + heads + cin)}"
  g_eq = f"{out}->{b}{''.join(tok + heads + cout)}"
  leaf_eq = f"...{hio}->...{rhs}"
  hio_shape = tuple(sizes[c] for c in heads + cin + cout)

  def x_fn(x):
    return jnp.einsum(x_eq, x).reshape(x.shape[0], n_t, h, i)

  def g_fn(g):
    return jnp.einsum(g_eq, g).reshape(g.shape[0], n_t, h, o)

  def to_leaf(w):
    return jnp.einsum(leaf_eq, w.reshape(w.shape[:-3] + hio_shape))

  uses: list = [Bilinear(path + ("kernel",), x_fn, g_fn, to_leaf, ("einsum", dims, rhs, hio))]
  if bias is not None:
    bias_sub = "".join(c for c in out if c in rhs)
    if tuple(sizes[c] for c in bias_sub) != tuple(bias_shape or ()):
      return None
    uses.append(Reduce(tuple(bias), lambda g, eq=f"{out}->{b}{bias_sub}": jnp.einsum(eq, g)))
  return uses


def dot_general_use(
  path: Sequence[str],
  dimension_numbers: tuple,
  kernel_side: int,
  x_shape: tuple,
  kernel_shape: tuple,
  example_axis: int,
) -> Bilinear | None:
  """The :class:`Bilinear` use of a raw kernel leaf in a ``dot_general`` with example data.

  The product (``x @ w``, ``w @ x``, any ``einsum``) is rewritten as the einsum it computes,
  with the example axis moved first in ``x`` and in the output; the use's ``x_fn`` and
  ``g_fn`` take ``x`` and the output gradient in the product's own layout.

  Args:
    path: the kernel leaf.
    dimension_numbers: the ``dot_general``'s ``((lhs_contract, rhs_contract), (lhs_batch,
      rhs_batch))``.
    kernel_side: 0 if the kernel is the left operand, 1 if the right.
    x_shape: the example-side operand's shape.
    kernel_shape: the kernel's shape.
    example_axis: the example (batch) axis of ``x``, a free axis of the product.

  Returns:
    The use, or None if the product is not in the rule's einsum form.
  """
  (lc, rc), (lb, rb) = dimension_numbers
  xc, xb, kc, kb = (rc, rb, lc, lb) if kernel_side == 0 else (lc, lb, rc, rb)
  letters = iter(_LETTERS)
  xl: list = [None] * len(x_shape)
  kl: list = [None] * len(kernel_shape)
  for a, b in (*zip(xc, kc, strict=True), *zip(xb, kb, strict=True)):
    xl[a] = kl[b] = next(letters)
  xl = [c if c is not None else next(letters) for c in xl]
  kl = [c if c is not None else next(letters) for c in kl]
  batch = [xl[a] for a in xb]
  x_free = [xl[a] for a in range(len(x_shape)) if a not in xc and a not in xb]
  k_free = [kl[b] for b in range(len(kernel_shape)) if b not in kc and b not in kb]
  out = batch + (k_free + x_free if kernel_side == 0 else x_free + k_free)
  e = xl[example_axis]
  dest = out.index(e)
  lhs = e + "".join(c for c in xl if c != e)
  out_t = e + "".join(c for c in out if c != e)
  x_t = (x_shape[example_axis],) + tuple(n for d, n in enumerate(x_shape) if d != example_axis)
  uses = einsum_uses(tuple(path)[:-1], f"{lhs},{''.join(kl)}->{out_t}", x_t, kernel_shape)
  if uses is None:
    return None
  use = uses[0]
  return dataclasses.replace(
    use,
    path=tuple(path),
    x_fn=lambda x: use.x_fn(jnp.moveaxis(x, example_axis, 0)),
    g_fn=lambda g: use.g_fn(jnp.moveaxis(g, dest, 0)),
    signature=("dot_general", *use.signature),
  )


def dense_equation(ndim: int) -> str:
  """The einsum form of ``x @ kernel`` over the last axis of an ``ndim``-d input."""
  lead = _LETTERS[: ndim - 1]
  return f"{lead}Y,YZ->{lead}Z"


def dense_general_equation(ndim: int, axis: Sequence[int], n_features: int) -> str:
  """The einsum form of ``DenseGeneral`` (no ``batch_dims``) contracting ``axis``."""
  letters = _LETTERS[:ndim]
  feats = _LETTERS[ndim : ndim + n_features]
  free = "".join(c for k, c in enumerate(letters) if k not in axis)
  return f"{letters},{''.join(letters[a] for a in axis)}{feats}->{free}{feats}"


def as_tuple(v, n: int) -> tuple:
  """An int-or-sequence layer attribute as an ``n``-tuple (None -> ones)."""
  if v is None:
    return (1,) * n
  return (v,) * n if isinstance(v, int) else tuple(v)


def conv_padding(padding, kernel_dilation, kernel_size: tuple):
  """A Flax convolution's padding as ``"SAME"``/``"VALID"`` or explicit pairs; None if the
  rule does not support it (``"CIRCULAR"``, ``"REFLECT"``, N-d ``"CAUSAL"``)."""
  n = len(kernel_size)
  if isinstance(padding, str):
    if padding in ("SAME", "VALID"):
      return padding
    if padding == "CAUSAL" and n == 1:
      return ((as_tuple(kernel_dilation, 1)[0] * (kernel_size[0] - 1), 0),)
    return None
  if isinstance(padding, int):
    return ((padding, padding),) * n
  pairs = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  return pairs if len(pairs) == n else None


def conv_layer_uses(
  path: Sequence[str],
  x_shape: tuple,
  kernel_shape: tuple,
  *,
  padding,
  strides,
  input_dilation,
  kernel_dilation,
  feature_group_count: int,
  masked: bool,
  bias: tuple | None,
) -> list | None:
  """The uses of a Linen or NNX convolution layer call as configured, or None where the rule
  does not apply (several batch axes, a kernel mask, input dilation, unsupported padding,
  channels that do not split into the feature groups).

  Args:
    path: the layer's parameter path.
    x_shape: input shape (``[B, *spatial, C_in]``).
    kernel_shape: ``[*k, C_in / G, C_out]``.
    padding, strides, input_dilation, kernel_dilation: the layer's attributes (ints or tuples).
    feature_group_count: ``G``.
    masked: whether the layer has a kernel mask.
    bias: the bias leaf path or None.

  Returns:
    :func:`conv_uses`, or None.
  """
  n = len(kernel_shape) - 2
  pad = conv_padding(padding, kernel_dilation, tuple(kernel_shape[:-2]))
  if (
    len(x_shape) != n + 2
    or x_shape[-1] != feature_group_count * kernel_shape[-2]
    or kernel_shape[-1] % feature_group_count
    or masked
    or pad is None
    or as_tuple(input_dilation, n) != (1,) * n
  ):
    return None
  return conv_uses(
    path,
    x_shape,
    kernel_shape,
    strides=as_tuple(strides, n),
    padding=pad,
    input_dilation=(1,) * n,
    kernel_dilation=as_tuple(kernel_dilation, n),
    bias=bias,
    feature_group_count=feature_group_count,
  )


def conv_uses(
  path: Sequence[str],
  x_shape: tuple,
  kernel_shape: tuple,
  *,
  strides: tuple,
  padding,
  input_dilation: tuple,
  kernel_dilation: tuple,
  bias: tuple | None,
  feature_group_count: int = 1,
) -> list:
  """Uses of an N-d convolution (one batch axis, channels last, ``G`` feature groups).

  The kernel ``[*k, C_in / G, C_out]`` acts as ``G`` Dense heads on im2col patches: head ``j``
  maps the patches of input channels ``[j·C_in/G, (j+1)·C_in/G)`` (features ordered
  ``(C_in/G, *k)``) to output channels ``[j·C_out/G, (j+1)·C_out/G)``, as ``lax`` groups them
  (depthwise: ``G = C_in``). ``input_dilation`` must be 1 (checked by the caller).
  """
  path = tuple(path)
  n = len(kernel_shape) - 2
  groups = int(feature_group_count)
  c_in, c_out = kernel_shape[-2], kernel_shape[-1]  # c_in: channels per group.
  c_x, o_g = c_in * groups, c_out // groups  # The input's channels; outputs per group.
  ks = tuple(kernel_shape[:-2])
  k = int(np.prod(ks))

  def geometry(spatial):
    dilated = tuple((kk - 1) * d + 1 for kk, d in zip(ks, kernel_dilation, strict=True))
    pads = padding
    if isinstance(padding, str):
      pads = jax.lax.padtype_to_pads(spatial, dilated, strides, padding)
    out_sp = tuple(
      (sp + lo + hi - dk) // st + 1
      for sp, (lo, hi), dk, st in zip(spatial, pads, dilated, strides, strict=True)
    )
    return tuple(tuple(p) for p in pads), out_sp

  def windows(x):
    # The strided window of the padded input seen by each kernel offset, in kernel order
    # (data movement only; XLA:CPU ran lax.conv_general_dilated_patches, an identity-kernel
    # convolution, ~10x slower).
    pads, out_sp = geometry(x.shape[1:-1])
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    for offset in np.ndindex(*ks):
      start = (0,) + tuple(o * d for o, d in zip(offset, kernel_dilation, strict=True)) + (0,)
      limit = (
        (x.shape[0],)
        + tuple(
          st0 + (o - 1) * st + 1 for st0, o, st in zip(start[1:-1], out_sp, strides, strict=True)
        )
        + (c_x,)
      )
      yield jax.lax.slice(xp, start, limit, (1, *strides, 1))

  def x_fn(x):
    patches = jnp.stack(list(windows(x)), -1)  # [B, *out, C_x, K]: features (C_x, *k).
    return patches.reshape(x.shape[0], -1, groups, c_in * k)

  def gram_fn(x):
    # 1-D: patch_t · patch_s = Σ_j x_{t·st + j·d} · x_{s·st + j·d} over the padded input, so
    # the patch gram is a sum of k shifted windows of the input gram (B·T²·C_in, not ·C_in·k).
    # With G groups: one such gram per group, [B, G, T, T].
    ((lo, hi),), (t_out,) = geometry(x.shape[1:-1])
    xa = x.astype(_acc_dtype(x))
    if groups == 1:
      xx = jnp.einsum("btc,bsc->bts", xa, xa)[:, None]
    else:
      xg = xa.reshape(xa.shape[:2] + (groups, c_in))
      xx = jnp.einsum("btgc,bsgc->bgts", xg, xg)
    xx = jnp.pad(xx, ((0, 0), (0, 0), (lo, hi), (lo, hi)))
    st, d = strides[0], kernel_dilation[0]
    total = 0.0
    for j in range(ks[0]):
      a = j * d
      sl = slice(a, a + (t_out - 1) * st + 1, st)
      total = total + xx[:, :, sl, sl]
    return total

  def g_fn(g):
    return g.reshape(g.shape[0], -1, groups, o_g)

  def to_leaf(w):
    # [..., G, C_in·K, O_g] -> [..., *k, C_in, G·O_g] (output channel j·O_g + o).
    lead = w.shape[:-3]
    w = w.reshape(lead + (groups, c_in) + ks + (o_g,))
    m = len(lead)
    order = tuple(range(m)) + tuple(m + 2 + a for a in range(n)) + (m + 1, m, m + 2 + n)
    return jnp.transpose(w, order).reshape(lead + ks + (c_in, c_out))

  dims = conv_layout.canonical_numbers(n + 2)  # channels-last, kernel [*k, C_in, C_out]

  def sum_fn(x, g):
    # Σ_b Σ_t patch_{b,t}ᵀ g_{b,t} is the layer's own backward-filter convolution at the
    # (scaled) output gradient: XLA:CPU runs it in its convolution library, 1.7-2.7 ms against
    # 3.5-4.4 ms for one [C_in, C_out] dot per kernel offset over strided windows (B = 256,
    # T = 32, C = 64, k = 3..5). Inside a loop body XLA:CPU emits a non-canonical convolution
    # as a naive loop nest; the micro-batch loop's body is passed through core/conv_layout,
    # which puts this one in the library layout like the model's own convolutions.
    dt = jnp.promote_types(x.dtype, g.dtype)
    pads, _ = geometry(x.shape[1:-1])

    def conv(w):
      return jax.lax.conv_general_dilated(
        x.astype(dt),
        w,
        strides,
        pads,
        rhs_dilation=kernel_dilation,
        dimension_numbers=dims,
        feature_group_count=groups,
      )

    w0 = jnp.zeros(kernel_shape, dt)
    return jax.vjp(conv, w0)[1](g.astype(dt))[0]

  sig = ("conv", (groups, c_in * k, o_g), tuple(kernel_shape), strides, str(padding))
  uses: list = [
    Bilinear(path + ("kernel",), x_fn, g_fn, to_leaf, sig, gram_fn if n == 1 else None, sum_fn)
  ]
  if bias is not None:
    uses.append(Reduce(tuple(bias), lambda g: g.reshape(g.shape[0], -1, c_out).sum(1)))
  return uses


# ---- Per-example squared norms and clipped sums of one leaf from its uses. ----


def _gram(a: jax.Array) -> jax.Array:
  """``[B, H, T, T]`` gram ``a_t · a_s`` of ``a [B, T, H, K]`` over ``K``.

  With ``H = 1`` (every Dense / Conv use) it is one batched GEMM on the ``[B, T, K]`` view:
  XLA:CPU then contracts the minor axis of both operands in place. The ``"bthk,bshk->bhts"``
  einsum made it copy ``a`` to ``[B, H, K, T]`` first, a transposed copy of every layer input
  and output gradient that the scheduler created early and held through the backward pass
  (transformer B = 256, T = 64: +320 MB at the peak; 113 vs 63 ms for one 1024-wide gram).
  """
  if a.shape[2] == 1:
    flat = a[:, :, 0]
    return jax.lax.dot_general(flat, flat, (((2,), (2,)), ((0,), (0,))))[:, None]
  return jnp.einsum("bthk,bshk->bhts", a, a)


def _gram_dot(xx: jax.Array, ge: jax.Array) -> jax.Array:
  """``Σ_{t,s} xx[b,h,t,s] (g_t · g_s)`` per example, as ``Σ_t g_t · (xx g)_t``.

  The same T²·O multiply-adds as forming the output gradient's gram, but as one batched
  ``[T, T] × [T, O]`` product and an elementwise reduce: on XLA:CPU 1.75 vs 3.18 ms for the
  three convolutions of the privacy-study CNN (B = 256, T = 32, O = 64; the gram of ``ge``
  fused with its product with ``xx`` ran as three slow library fusions).
  """
  if xx.shape[1] == 1:
    g = ge[:, :, 0]
    mv = jax.lax.dot_general(xx[:, 0], g, (((2,), (1,)), ((0,), (0,))))  # [B, T, O]
    return jnp.sum(jnp.sum(mv * g, -1), -1)
  mv = jnp.einsum("bhts,bsho->btho", xx, ge)
  return jnp.sum(mv * ge, axis=(1, 2, 3))


def bilinear_sq(xe: jax.Array, ge: jax.Array, xx: jax.Array | None = None) -> jax.Array:
  """``||Σ_t x_tᵀ g_t||²`` per example for ``xe [B, T, H, I]``, ``ge [B, T, H, O]``.

  ``xx`` (optional): the gram ``[B, H, T, T]`` of ``xe``, already computed more cheaply.
  """
  dt = _acc_dtype(xe, ge)
  xe, ge = xe.astype(dt), ge.astype(dt)
  t, i, o = xe.shape[1], xe.shape[3], ge.shape[3]
  if t == 1:
    return jnp.sum(jnp.sum(xe[:, 0] ** 2, -1) * jnp.sum(ge[:, 0] ** 2, -1), -1)
  if xx is not None and t <= i:  # Ghost costs T²·O given the gram; materialising T·I·O.
    return _gram_dot(xx.astype(dt), ge)
  if t * (i + o) <= i * o:
    return jnp.sum(_gram(xe) * _gram(ge), axis=(1, 2, 3))
  return jnp.sum(jnp.square(jnp.einsum("bthi,btho->bhio", xe, ge)), axis=(1, 2, 3))


def bilinear_per_example(xe: jax.Array, ge: jax.Array) -> jax.Array:
  """Materialised ``[B, H, I, O]`` per-example gradients."""
  return jnp.einsum("bthi,btho->bhio", xe, ge)


def _sum_over_rows(a: jax.Array, b: jax.Array) -> jax.Array:
  """``Σ_r a[r]ᵀ b[r]`` for ``a [R, I]``, ``b [R, O]`` as ``[I, O]``: one GEMM contracting the
  rows of both (XLA:CPU transposes neither; the einsum ``"bthi,btho->hio"`` form made it copy
  the wider operand to ``[I, B·T]`` first: 112 vs 75 ms at B·T = 16k, I = 1024, O = 256)."""
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def bilinear_sum(xe: jax.Array, ge: jax.Array, factor: jax.Array) -> jax.Array:
  """``Σ_i c_i Σ_t x_{i,t}ᵀ g_{i,t}`` as ``[H, I, O]`` (the factor scales the narrower side)."""
  b, t, h, i = xe.shape
  o = ge.shape[-1]
  f = factor.astype(xe.dtype)[:, None, None, None]
  if i <= o:
    xe = xe * f
  else:
    ge = ge * f.astype(ge.dtype)
  if h == 1:
    return _sum_over_rows(xe.reshape(b * t, i), ge.reshape(b * t, o))[None]
  return jax.lax.dot_general(
    xe.reshape(b * t, h, i), ge.reshape(b * t, h, o), (((0,), (0,)), ((1,), (1,)))
  )


def lookup_sq(
  ids: jax.Array, g: jax.Array, *, method: str = "auto", table_rows: int | None = None
) -> jax.Array:
  """``||Σ_t onehot(id_t) g_tᵀ||²`` per example (``ids [B, T]``, ``g [B, T, D]``).

  ``"segment"``: sort each example's ids, sum the rows of equal ids (one sorted segment sum,
  ``O(B·T·D)``) and square; ``"gram"``: ``Σ_{t,s} [id_t = id_s] g_t·g_s`` (``O(B·T²·D)``).
  ``"auto"`` takes the gram for ``T < 16`` (where it is as cheap and has no sort).
  ``table_rows`` (the vocabulary size, ids in ``[0, table_rows)``) enables a packed-key sort.
  """
  dt = _acc_dtype(g)
  g = g.astype(dt)
  b, t = ids.shape
  if t == 1:
    return jnp.sum(g[:, 0] ** 2, -1)
  if method == "gram" or (method == "auto" and t < 16):
    gg = jnp.einsum("btd,bsd->bts", g, g)
    return jnp.sum(jnp.where(ids[:, :, None] == ids[:, None, :], gg, 0.0), axis=(1, 2))
  ids = ids.astype(jnp.int32)
  if table_rows is not None and table_rows * t < 2**31:
    # One single-operand sort of packed keys id·T + t (XLA:CPU: ~4x faster than argsort).
    packed = jnp.sort(ids * t + jnp.arange(t, dtype=jnp.int32)[None], axis=1)
    order, sid = packed % t, packed // t
  else:
    order = jnp.argsort(ids, axis=1)
    sid = jnp.take_along_axis(ids, order, 1)
  sg = jnp.take_along_axis(g, order[..., None], 1)
  new = jnp.concatenate([jnp.ones((b, 1), bool), sid[:, 1:] != sid[:, :-1]], 1)
  seg = jnp.cumsum(new, 1) - 1 + (jnp.arange(b) * t)[:, None]
  sums = jax.ops.segment_sum(
    sg.reshape(b * t, -1), seg.reshape(-1), num_segments=b * t, indices_are_sorted=True
  )
  # Row norms first, then per example: the one reduce over [B, T·D] ran 0.5 ms on XLA:CPU (bag).
  return jnp.sum(jnp.sum(sums * sums, -1).reshape(b, t), 1)


def table_sq(
  ids: jax.Array | None,
  g: jax.Array | None,
  x: jax.Array | None,
  dl: jax.Array | None,
  table_rows: int | None = None,
) -> jax.Array:
  """Squared norm of a (possibly tied) table's per-example gradient.

  The gradient is ``Σ_t onehot(id_t) g_tᵀ`` (lookups; ``ids [B, T]``, ``g [B, T, D]``) plus
  ``Σ_s dl_sᵀ x_s`` (attend; ``x [B, S, D]``, logit gradients ``dl [B, S, V]``); either part
  may be absent. The squared norm of the sum is the lookup gram masked by token equality, the
  attend ghost norm, and twice the cross term ``Σ_{t,s} dl_s[id_t] (g_t·x_s)``.
  """
  total = 0.0
  if ids is not None:
    total = lookup_sq(ids, g, table_rows=table_rows)
  if x is not None:
    total = total + bilinear_sq(x[:, :, None], dl[:, :, None])
  if ids is not None and x is not None:
    dt = _acc_dtype(g, x, dl)
    at_ids = jnp.take_along_axis(
      dl, jnp.broadcast_to(ids[:, None, :], dl.shape[:2] + ids.shape[1:]), 2
    )
    gx = jnp.einsum("btd,bsd->bst", g.astype(dt), x.astype(dt))
    total = total + 2.0 * jnp.sum(at_ids.astype(dt) * gx, axis=(1, 2))
  return total


def table_sum(
  ids: jax.Array | None,
  g: jax.Array | None,
  x: jax.Array | None,
  dl: jax.Array | None,
  factor: jax.Array,
  shape: tuple,
  dtype,
) -> jax.Array:
  """``Σ_i c_i G_i`` of a (possibly tied) table: a scatter-add plus one ``[V, D]`` einsum."""
  out = jnp.zeros(shape, dtype)
  if ids is not None:
    rows = g * factor.astype(g.dtype)[:, None, None]
    out = out.at[ids.reshape(-1)].add(rows.reshape(-1, shape[-1]).astype(dtype))
  if x is not None:
    xs = x * factor.astype(x.dtype)[:, None, None]
    head = _sum_over_rows(dl.reshape(-1, dl.shape[-1]), xs.reshape(-1, xs.shape[-1]))
    out = out + head.astype(dtype)
  return out


__all__ = [
  "Attend",
  "as_tuple",
  "conv_padding",
  "Bilinear",
  "Lookup",
  "Reduce",
  "bilinear_per_example",
  "bilinear_sq",
  "bilinear_sum",
  "conv_layer_uses",
  "conv_uses",
  "dot_general_use",
  "lookup_sq",
  "dense_equation",
  "dense_general_equation",
  "einsum_uses",
  "table_sq",
  "table_sum",
]
