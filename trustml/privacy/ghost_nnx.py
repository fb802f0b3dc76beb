"""Flax NNX layers for eDP-SGD: the ghost rules of :mod:`trustml.privacy.ghost_rules` on NNX.

NNX has no ``intercept_methods``; while :mod:`trustml.privacy.ghost` traces a loss, the
``__call__`` (and ``Embed.attend``) of ``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Einsum``,
``nnx.Embed``, ``nnx.Conv``, ``nnx.LayerNorm`` and ``nnx.RMSNorm`` are wrapped so each call is
recorded like a Linen one. A layer is mapped to its parameter path by the identity of its
parameter arrays: a Model built by :func:`trustml.models.nnx_adapter.from_nnx` merges the
parameter dict it is given (``nnx.merge`` keeps the arrays), so ``layer.kernel`` *is* the
leaf ``params[...]["kernel"]``. Layers whose arrays are not leaves of that dict are not
recorded (their parameters are not trained through it).
"""

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
from flax import nnx

from trustml.privacy import ghost_rules as rules

NORM_TYPES = (nnx.LayerNorm, nnx.RMSNorm)
NNX_TYPES = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Embed, nnx.Conv, *NORM_TYPES)
_ORIGINAL: dict = {}  # (class, method) -> the unpatched function, while patched.


@dataclasses.dataclass(frozen=True)
class NnxLayer:
  """What a rule needs from an NNX layer: its class, static attributes and graph."""

  cls: type
  attrs: dict
  graphdef: Any


def is_nnx(module: Any) -> bool:
  """Whether a recorded module is an NNX layer (:class:`NnxLayer`)."""
  return isinstance(module, NnxLayer)


_ATTRS = (
  "axis",
  "batch_axis",
  "einsum_str",
  "padding",
  "strides",
  "input_dilation",
  "kernel_dilation",
  "feature_group_count",
  "mask",
)


def _first_param(layer) -> jax.Array | None:
  for name in ("kernel", "embedding", "scale", "bias"):
    var = getattr(layer, name, None)
    if isinstance(var, nnx.Variable):
      return var.get_value()
  return None


@contextlib.contextmanager
def patched(state, params, record: Callable):
  """Wraps the NNX rule layers' calls so ``record`` sees them (re-entrant, restored on exit)."""
  index = {id(v): k for k, v in flax.traverse_util.flatten_dict(params).items()}
  if not index or _ORIGINAL:  # Nothing to map, or already patched (nested trace).
    yield
    return

  def wrap(cls, method):
    orig = cls.__dict__.get(method) or getattr(cls, method)

    def wrapped(self, *args, **kwargs):
      leaf = index.get(id(_first_param(self)))
      if leaf is None or not args:
        return orig(self, *args, **kwargs)
      path = leaf[:-1]
      if path in state.active:
        return orig(self, *args, **kwargs)
      attrs = {a: getattr(self, a) for a in _ATTRS if hasattr(self, a)}
      extra = {}
      if cls is nnx.Einsum and (len(args) > 1 or "einsum_str" in kwargs):
        extra["einsum_str"] = args[1] if len(args) > 1 else kwargs["einsum_str"]
      layer = NnxLayer(cls, attrs, nnx.graphdef(self) if cls in NORM_TYPES else None)
      return record(state, path, layer, method, extra, args[0], (self, *args), kwargs, orig)

    return orig, wrapped

  targets = [(c, "__call__") for c in NNX_TYPES] + [(nnx.Embed, "attend")]
  try:
    for cls, method in targets:
      orig, wrapped = wrap(cls, method)
      _ORIGINAL[(cls, method)] = orig
      setattr(cls, method, wrapped)
    yield
  finally:
    for (cls, method), orig in _ORIGINAL.items():
      setattr(cls, method, orig)
    _ORIGINAL.clear()


def call_uses(call, leaves, size: int) -> list | None:
  """The rule uses of one recorded NNX layer call, or None (its leaves become residual)."""
  layer, x_shape = call.module, call.in_shape
  own = {p[-1]: p for p in leaves if p[:-1] == call.path}
  if not own or not x_shape or x_shape[0] != size or call.out_shape[:1] != (size,):
    return None
  bias = own.get("bias")
  bias_shape = None if bias is None else leaves[bias].shape
  cls, attrs = layer.cls, layer.attrs
  if cls is nnx.Embed:
    if set(own) != {"embedding"}:
      return None
    if call.method == "attend":
      return [rules.Attend(own["embedding"])] if len(x_shape) >= 2 else None
    return (
      [rules.Lookup(own["embedding"])]
      if jax.numpy.issubdtype(call.in_dtype, jax.numpy.integer)
      else None
    )
  if cls in NORM_TYPES:
    from trustml.privacy import ghost  # noqa: PLC0415  (cycle: ghost imports this module)

    return [ghost.Small(tuple(own.values()), layer)]
  if "kernel" not in own or set(own) - {"kernel", "bias"}:
    return None
  kshape = leaves[own["kernel"]].shape
  if cls is nnx.Linear:
    eq = rules.dense_equation(len(x_shape))
  elif cls is nnx.LinearGeneral:
    if attrs.get("batch_axis"):
      return None
    axis = attrs["axis"]
    axis = tuple(a % len(x_shape) for a in ((axis,) if isinstance(axis, int) else axis))
    if 0 in axis:
      return None
    eq = rules.dense_general_equation(len(x_shape), axis, len(kshape) - len(axis))
  elif cls is nnx.Einsum:
    eq = call.kwargs.get("einsum_str") or attrs.get("einsum_str")
  elif cls is nnx.Conv:
    return rules.conv_layer_uses(
      call.path,
      x_shape,
      kshape,
      padding=attrs["padding"],
      strides=attrs["strides"],
      input_dilation=attrs["input_dilation"],
      kernel_dilation=attrs["kernel_dilation"],
      feature_group_count=attrs["feature_group_count"],
      masked=attrs.get("mask") is not None,
      bias=bias,
    )
  else:
    return None
  if eq is None:
    return None
  return rules.einsum_uses(call.path, eq, x_shape, kshape, bias, bias_shape)


def small_per_example(layer: NnxLayer, layer_params: dict, x: jax.Array, g: jax.Array) -> dict:
  """Per-example gradients of an NNX normalisation layer's parameters from ``(x, g)``."""
  call = _ORIGINAL.get((layer.cls, "__call__"), layer.cls.__call__)

  def apply(p, x_i):
    return call(nnx.merge(layer.graphdef, p), x_i)

  def one(x_i, g_i):
    _, vjp = jax.vjp(lambda p: apply(p, x_i[None]), layer_params)
    return vjp(g_i[None])[0]

  return jax.vmap(one)(x, g)


__all__ = ["NNX_TYPES", "NnxLayer", "call_uses", "is_nnx", "patched", "small_per_example"]
