"""Gaussian noise for DP sums: the privatizer, keyed from a secret stream.

:func:`gaussian_privatizer` is an ``optax.GradientTransformation`` in the spirit of
``optax.inject_hyperparams``: its state holds the secret noise key (raw key data, so it can be
checkpointed), a draw counter and the noise standard deviation of the next draw, which the
caller may set per step (a σ schedule, adaptive clipping's C) without recompiling. Each
``update`` is ONE draw for the whole logical batch or round, from ``fold_in(key, count)``: no
key is used twice.

The key must come from :class:`trustml.core.rng.SecretStreams` (OS entropy at a run's first
start, kept only in its checkpoint), never from the public run seed.
"""

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class PrivatizerState(NamedTuple):
  """State of :func:`gaussian_privatizer`.

  Attributes:
    key_data: ``uint32`` raw data of the secret typed key (``jax.random.key_data``).
    count: int32 number of draws made.
    stddev: float32 std of the next draw (set per step by the caller).
  """

  key_data: jax.Array
  count: jax.Array
  stddev: jax.Array


def add_gaussian_noise(tree, stddev: jax.typing.ArrayLike, key: jax.Array) -> object:
  """Adds ``N(0, stddev²)`` independently to every coordinate of ``tree``.

  Args:
    tree: pytree of float arrays (e.g. the sum of clipped gradients).
    stddev: noise standard deviation (scalar, may be traced).
    key: typed PRNG key; required (no default) and consumed: never pass it to another draw.

  Returns:
    The noised tree.

  Formal guarantees:
    If ``tree`` has L2 sensitivity Δ, the output is the Gaussian mechanism with noise
    multiplier ``stddev / Δ``. Nothing else is bounded here (sampling, composition: see
    :mod:`trustml.privacy.ledger`).
  """
  leaves, treedef = jax.tree.flatten(tree)
  std = jnp.asarray(stddev, jnp.float32)
  normals = _standard_normals(key, [x.shape for x in leaves])
  noised = [x + (std * z).astype(x.dtype) for x, z in zip(leaves, normals, strict=True)]
  return jax.tree.unflatten(treedef, noised)


# Threefry-2x32 (Salmon et al. 2011, 20 rounds): the rotation constants of its two round groups.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def _rotl(v: jax.Array, d: int) -> jax.Array:
  return (v << np.uint32(d)) | (v >> np.uint32(32 - d))


def _threefry_unrolled(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple:
  """Threefry-2x32 of the counter pairs ``(x0, x1)`` under key ``(k0, k1)``, as 20 unrolled
  elementwise rounds (the same function as ``jax.random``'s ``threefry2x32_p``)."""
  ks = (k0, k1, k0 ^ k1 ^ np.uint32(_PARITY))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotl(x1, r)
    x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def _bits_cpu(key_data: jax.Array, n: int) -> jax.Array:
  """``jax.random.bits(key, (n,), uint32)`` of the non-partitionable threefry form, bit for
  bit: the counters ``0..n-1`` (zero-padded to even length) split in halves, hashed pairwise,
  the two output halves concatenated."""
  m = (n + 1) // 2
  i = jnp.arange(m, dtype=jnp.uint32)
  hi = i + np.uint32(m)
  hi = jnp.where(hi < n, hi, np.uint32(0))
  y0, y1 = _threefry_unrolled(key_data[0], key_data[1], i, hi)
  return jnp.concatenate([y0, y1])[:n]


def _normal_from_bits(bits: jax.Array) -> jax.Array:
  """``jax.random.normal``'s transform of 32 random bits (float32): a uniform on
  ``(nextafter(-1, 0), 1)`` from the 23 high bits, then ``√2 · erfinv``."""
  lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
  hi = np.float32(1.0)
  mant = (bits >> np.uint32(9)) | np.uint32(np.float32(1.0).view(np.uint32))
  floats = jax.lax.bitcast_convert_type(mant, jnp.float32) - np.float32(1.0)
  u = jnp.maximum(lo, floats * (hi - lo) + lo)
  return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)


def _standard_normals(key: jax.Array, shapes: list[tuple]) -> list[jax.Array]:
  """i.i.d. ``N(0, 1)`` float32 arrays of ``shapes`` from one key: bit for bit
  ``jax.random.normal(key, (total,))`` (threefry2x32, non-partitionable) sliced per shape,
  in a form that is fast on XLA:CPU.

  Four formulation choices, measured on XLA:CPU (docs/privacy_performance.md §5, §7, §11);
  none changes the distribution or the generator:

  * one flat draw for all the shapes, sliced per leaf: one generator in the compiled step
    instead of one per parameter leaf (the privacy-study CNN's eDP step: 8.8k HLO lines and
    2.5 s of compilation with per-leaf draws);
  * the draw is replicated (one draw for the logical batch, the same on every device), so it
    needs no partitionable counters; the non-partitionable threefry form hashes two output
    words per counter pair (1.92 M normals: 10–14 ms vs 29–40 ms);
  * on CPU the 20 threefry rounds are unrolled elementwise ops (one fused loop) instead of
    JAX's CPU lowering, a rolled while loop over the whole counter array (1.92 M draws + add:
    7.8–8.5 vs 10.6–13.4 ms); other backends keep ``jax.random.normal`` (GPU: its kernel);
  * the bits and the normals are each the output of their own computation (a ``lax.cond`` on
    a predicate that is always true, ``(k | 1) != 0``, whose other branch is never taken):
    fused into the consumer's add, the inverse-CDF transform was compiled ~4x slower
    (1.92 M normals + add: 78 vs 19 ms).
  """
  if not shapes:
    return []
  sizes = [math.prod(s) for s in shapes]
  total = sum(sizes)
  word = jax.random.key_data(key).reshape(-1)[0]

  def boundary(fn, operand):  # fn(operand) as its own computation (see above).
    out = jax.eval_shape(fn, operand)
    return jax.lax.cond((word | 1) != 0, fn, lambda _: jnp.zeros(out.shape, out.dtype), operand)

  def reference(key):
    with jax.threefry_partitionable(False):
      return jax.random.normal(key, (total,), jnp.float32)

  def unrolled(key):
    bits = boundary(lambda k: _bits_cpu(jax.random.key_data(k), total), key)
    return boundary(_normal_from_bits, bits)

  threefry = str(jax.random.key_impl(key)) == "threefry2x32" and key.shape == ()
  if threefry and total < 2**32 - 1:
    flat = jax.lax.platform_dependent(key, cpu=unrolled, default=lambda k: boundary(reference, k))
  else:
    flat = boundary(reference, key)
  offsets = list(itertools.accumulate(sizes, initial=0))
  return [
    flat[a:b].reshape(shape) for a, b, shape in zip(offsets[:-1], offsets[1:], shapes, strict=True)
  ]


def draw_key(state: PrivatizerState, name: int = 0) -> jax.Array:
  """The typed key of the current draw (``name`` separates the sum's and the count's draws)."""
  key = jax.random.wrap_key_data(state.key_data)
  return jax.random.fold_in(jax.random.fold_in(key, state.count), name)


def gaussian_privatizer(
  key_data: jax.typing.ArrayLike, stddev: float = 0.0
) -> optax.GradientTransformation:
  """An optax transformation adding one Gaussian draw of std ``state.stddev`` per update.

  Example:
    >>> from trustml.core import rng
    >>> priv = gaussian_privatizer(rng.SecretStreams.fresh().key_data("dp_noise"), stddev=1.0)
    >>> state = priv.init(params)  # doctest: +SKIP
    >>> noised, state = priv.update(sum_of_clipped_grads, state)  # doctest: +SKIP

  Args:
    key_data: raw data of the secret key (``SecretStreams.key_data``); required.
    stddev: initial std (``σ · C`` for DP-SGD); overwrite ``state.stddev`` per step with
      ``state._replace(stddev=...)``.

  Returns:
    The ``optax.GradientTransformation``.

  Formal guarantees:
    If the updates fed in have L2 sensitivity Δ, each update is the Gaussian mechanism with
    noise multiplier ``state.stddev / Δ``; draws at different counts are independent. The
    caller must record the std actually used (it is returned in the new state's history only
    through the caller: see :mod:`trustml.privacy.mechanism`).
  """
  key_data = jnp.asarray(key_data, jnp.uint32)

  def init_fn(params):
    del params
    return PrivatizerState(key_data, jnp.zeros((), jnp.int32), jnp.asarray(stddev, jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    noised = add_gaussian_noise(updates, state.stddev, draw_key(state))
    return noised, state._replace(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def noisy_scalar(
  value: jax.Array, stddev: jax.typing.ArrayLike, state: PrivatizerState
) -> jax.Array:
  """``value + N(0, stddev²)`` from the current draw's second sub-key (the count query).

  Call before the privatizer's ``update`` of the same step (both use ``state.count``).
  """
  key = draw_key(state, 1)
  return value + jnp.asarray(stddev, jnp.float32) * jax.random.normal(key, (), jnp.float32)


__all__ = [
  "PrivatizerState",
  "add_gaussian_noise",
  "draw_key",
  "gaussian_privatizer",
  "noisy_scalar",
]
