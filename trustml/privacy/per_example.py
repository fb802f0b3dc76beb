"""Naive per-example gradients: ``jax.vmap(jax.grad(...))`` over the Model's per-example loss.

This is the reference DP-SGD path: it materialises a ``[B, *param_shape]`` gradient for every
parameter (for a 30k x 256 token table that is 7.7 M floats per example). The efficient path is
:mod:`trustml.privacy.ghost`; both produce the same clipped sum.
"""

from collections.abc import Callable

import jax

from trustml.core.types import Batch, Params

LossFn = Callable[..., jax.Array]  # (params, batch, rng=None) -> [B]


def _single(batch: Batch) -> Batch:
  return jax.tree.map(lambda x: x[None], batch)


def per_example_grads(
  loss_fn: LossFn, params: Params, batch: Batch, rng: jax.Array | None = None
) -> tuple[Params, jax.Array]:
  """Per-example gradients and losses.

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> [B]`` (the Model's ``per_example_loss``).
    params: parameters.
    batch: a batch with leading axis B (every leaf).
    rng: dropout key or None; example ``i`` uses ``fold_in(rng, i)``.

  Returns:
    ``(grads, losses)``: a ``[B, ...]`` pytree shaped like ``params`` and the ``[B]`` losses.

  Example:
    >>> grads, losses = per_example_grads(model.per_example_loss, params, batch)
  """
  size = jax.tree.leaves(batch)[0].shape[0]

  def one(example, index):
    key = None if rng is None else jax.random.fold_in(rng, index)

    def loss(p):
      return loss_fn(p, _single(example), key)[0]

    value, grad = jax.value_and_grad(loss)(params)
    return grad, value

  return jax.vmap(one)(batch, jax.numpy.arange(size))


def per_example_grads_subset(
  loss_fn: LossFn,
  params: Params,
  batch: Batch,
  select: Callable[[Params], Params],
  merge: Callable[[Params, Params], Params],
  rng: jax.Array | None = None,
) -> Params:
  """Per-example gradients of a subset of the parameters (the ghost path's fallback).

  Args:
    loss_fn: per-example loss.
    params: all parameters (the rest are held fixed).
    batch: batch with leading axis B.
    select: ``select(params) -> subset`` pytree.
    merge: ``merge(params, subset) -> params`` putting a subset back.
    rng: dropout key or None.

  Returns:
    ``[B, ...]`` pytree shaped like ``select(params)``.
  """
  size = jax.tree.leaves(batch)[0].shape[0]
  subset = select(params)

  def one(example, index):
    key = None if rng is None else jax.random.fold_in(rng, index)
    return jax.grad(lambda s: loss_fn(merge(params, s), _single(example), key)[0])(subset)

  return jax.vmap(one)(batch, jax.numpy.arange(size))


__all__ = ["per_example_grads", "per_example_grads_subset"]
