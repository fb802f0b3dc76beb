"""Convolutions in the layout XLA:CPU's convolution library accepts, inside loop bodies too.

XLA:CPU runs a convolution through its fast library (Eigen) only when the operands are laid
out as ``[batch, spatial..., feature]`` and the kernel as ``[spatial..., in, out]``. Its
canonicalisation pass, which inserts the transposes that bring other convolutions into that
form, rewrites the entry computation only: a convolution inside a ``while`` body (a rolled
``lax.scan``, ``fori_loop``) that is not already canonical is emitted as a naive loop nest.
JAX's own derivatives of an ordinary ``NWC``/``WIO`` convolution are such convolutions (the
input gradient convolves with the kernel as ``[spatial, out, in]``; the kernel gradient
contracts over the batch as a feature), so a model's backward pass inside a rolled
micro-batch or local-training loop ran 30-75x slower than the same code unrolled (measured on
XLA:CPU, JAX 0.10: a width-5 ``NWC`` convolution's value-and-grad over 5 x 256 rows in a
rolled scan 4.58 s, unrolled 0.070 s, rolled after this rewrite 0.064 s).

:func:`canonical_convolutions` traces a function to a jaxpr and re-emits every convolution
that is not canonical as transpose -> canonical convolution -> transpose: the same
arithmetic, in the form XLA:CPU accelerates wherever the convolution sits. It is applied to
loop bodies on the CPU backend only (other backends normalise layouts themselves).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core

_CALLS = ("pjit", "jit", "closed_call", "core_call")


def canonical_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """Dimension numbers of the layout XLA:CPU's convolution library runs.

  Args:
    ndim: rank of the input (batch, spatial axes, feature).

  Returns:
    Input and output ``[batch, spatial..., feature]``, kernel ``[spatial..., in, out]``.
  """
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers(
    lhs_spec=(0, ndim - 1) + spatial,
    rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
    out_spec=(0, ndim - 1) + spatial,
  )


def is_canonical(dimension_numbers: lax.ConvDimensionNumbers, ndim: int) -> bool:
  """Whether a convolution's dimension numbers are XLA:CPU's library layout.

  Args:
    dimension_numbers: the ``conv_general_dilated`` primitive's ``dimension_numbers``.
    ndim: rank of its operands.

  Returns:
    True for ``[batch, spatial..., feature]`` operands and ``[spatial..., in, out]`` kernels.
  """
  return tuple(map(tuple, dimension_numbers)) == tuple(map(tuple, canonical_numbers(ndim)))


def _canonical_conv(lhs: jax.Array, rhs: jax.Array, *, dimension_numbers, **params) -> jax.Array:
  """``conv_general_dilated_p`` with transposed operands so its layout is canonical."""
  lspec, rspec, ospec = dimension_numbers
  ndim = lhs.ndim
  lhs_t = jnp.transpose(lhs, (lspec[0],) + tuple(lspec[2:]) + (lspec[1],))
  rhs_t = jnp.transpose(rhs, tuple(rspec[2:]) + (rspec[1], rspec[0]))
  out = lax.conv_general_dilated_p.bind(
    lhs_t, rhs_t, dimension_numbers=canonical_numbers(ndim), **params
  )
  # ``out`` is [batch, spatial..., feature]; put each axis where ``ospec`` wants it.
  source = (ospec[0],) + tuple(ospec[2:]) + (ospec[1],)
  inverse = [0] * ndim
  for axis, dim in enumerate(source):
    inverse[dim] = axis
  return jnp.transpose(out, inverse)


def _sub_jaxpr(eqn) -> jex_core.ClosedJaxpr | None:
  if eqn.primitive.name not in _CALLS:
    return None
  sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
  return sub if isinstance(sub, jex_core.ClosedJaxpr) else None


def _needs_rewrite(jaxpr: jex_core.Jaxpr) -> bool:
  for eqn in jaxpr.eqns:
    if eqn.primitive is lax.conv_general_dilated_p:
      if not is_canonical(eqn.params["dimension_numbers"], eqn.invars[0].aval.ndim):
        return True
    sub = _sub_jaxpr(eqn)
    if sub is not None and _needs_rewrite(sub.jaxpr):
      return True
  return False


def _eval(jaxpr: jex_core.Jaxpr, consts: Sequence[Any], *args: Any) -> list[Any]:
  env: dict = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts, strict=True):
    env[v] = c
  for v, a in zip(jaxpr.invars, args, strict=True):
    env[v] = a
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    sub = _sub_jaxpr(eqn)
    if eqn.primitive is lax.conv_general_dilated_p and not is_canonical(
      eqn.params["dimension_numbers"], ins[0].ndim
    ):
      outs = [_canonical_conv(*ins, **eqn.params)]
    elif sub is not None and _needs_rewrite(sub.jaxpr):
      outs = _eval(sub.jaxpr, sub.consts, *ins)  # Inlined: only calls that hold a rewrite.
    else:
      with eqn.ctx.manager:  # As jax.core.eval_jaxpr binds an equation.
        outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, o in zip(eqn.outvars, outs, strict=True):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


def canonical_convolutions(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with every non-canonical convolution it computes re-emitted in canonical layout.

  The returned function computes exactly what ``fn`` computes (the convolution's arithmetic
  is unchanged; only operand layouts move), including convolutions JAX creates when ``fn``
  differentiates. Convolutions nested in loops, conditionals or custom-derivative calls
  inside ``fn`` are left as they are. Use it on the body of a loop on XLA:CPU.

  Args:
    fn: a function of arrays / pytrees of arrays (traced with ``jax.make_jaxpr``).

  Returns:
    A function with ``fn``'s signature and outputs.
  """

  @functools.wraps(fn)
  def wrapped(*args: Any) -> Any:
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = _eval(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

  return wrapped


def loop_body(fn: Callable[..., Any]) -> Callable[..., Any]:
  """:func:`canonical_convolutions` on the CPU backend, ``fn`` itself elsewhere.

  Args:
    fn: the body of a ``lax.scan`` / ``fori_loop`` / ``while_loop``.

  Returns:
    The body to give the loop.
  """
  return canonical_convolutions(fn) if jax.default_backend() == "cpu" else fn
