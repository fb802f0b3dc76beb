"""Gaussian noise for DP sums: one independent draw per leaf from a REQUIRED key."""

import jax
import jax.numpy as jnp


def add_gaussian_noise(tree, stddev: jax.typing.ArrayLike, key: jax.Array) -> object:
  """Adds ``N(0, stddev²)`` independently to every coordinate of ``tree``.

  Args:
    tree: pytree of float arrays (e.g. the sum of clipped gradients).
    stddev: noise standard deviation, ``σ · C`` for DP-SGD (scalar, may be traced).
    key: typed PRNG key; required (no default) and consumed: never pass it to another draw.

  Returns:
    The noised tree.

  Formal guarantees:
    If ``tree`` has L2 sensitivity Δ, the output is the Gaussian mechanism with noise
    multiplier ``stddev / Δ``. Nothing else is bounded here (sampling, composition: see
    :mod:`trustml.privacy.accounting`).
  """
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  std = jnp.asarray(stddev, jnp.float32)
  noised = [
    x + (std * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
    for x, k in zip(leaves, keys, strict=True)
  ]
  return jax.tree.unflatten(treedef, noised)


__all__ = ["add_gaussian_noise"]
