"""Adaptive quantile clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021), for every DP path.

The clip norm follows a target quantile γ of the per-unit norms (examples' gradients in DP-SGD,
users' model deltas in DP-FedAvg): after each step, ``C ← C · exp(−η (b̃ − γ))`` where ``b̃`` is
the *noisy* fraction of units whose norm was ≤ C, released by a Gaussian count query on the same
sample: ``b̃ = (Σ_i (b_i − ½) + N(0, σ_b²)) / n̄ + ½`` with ``n̄`` the expected number of units.
The count is released **centred**, so its sensitivity is ½ under add/remove-one
(:meth:`trustml.privacy.aggregators.ClippedAggregator.count_sensitivity`); the ledger composes
it with the clipped sum as one Gaussian query.
"""

import jax
import jax.numpy as jnp

from trustml.core import validation
from trustml.privacy import aggregators, noise


def default_count_noise_multiplier(expected_batch_size: float) -> float:
  """σ_b = expected batch size / 20, the setting recommended by Andrew et al. (2021)."""
  validation.positive("expected_batch_size", expected_batch_size)
  return expected_batch_size / 20.0


def geometric_update(
  l2_clip_norm: jax.typing.ArrayLike,
  unclipped_fraction: jax.typing.ArrayLike,
  target_quantile: float,
  learning_rate: float,
) -> jax.Array:
  """One geometric step of the clip norm towards the target quantile (traceable).

  Args:
    l2_clip_norm: current C > 0.
    unclipped_fraction: noisy fraction b̃ of units with norm ≤ C (already privatised).
    target_quantile: γ in (0, 1).
    learning_rate: η > 0.

  Returns:
    ``C · exp(−η (b̃ − γ))`` (float32).

  Formal guarantees:
    Post-processing of the privatised b̃: no extra privacy cost beyond the count query.
  """
  c = jnp.asarray(l2_clip_norm, jnp.float32)
  frac = jnp.asarray(unclipped_fraction, jnp.float32)
  return (c * jnp.exp(-learning_rate * (frac - target_quantile))).astype(jnp.float32)


def noisy_unclipped_fraction(
  aggregator: aggregators.ClippedAggregator,
  stats: dict,
  count_noise_std: float,
  normaliser: jax.typing.ArrayLike,
  privatizer_state: noise.PrivatizerState,
) -> jax.Array:
  """The released b̃: the aggregator's (centred) count plus one Gaussian draw, normalised.

  Args:
    aggregator: the path's clipped aggregator (its count and offset).
    stats: clipping stats of the sampled units (``num_examples``, ``num_nonfinite``,
      ``num_unclipped``).
    count_noise_std: σ_b > 0.
    normaliser: the expected number of units (``qN``), never the realised count.
    privatizer_state: the step's privatizer state (its second sub-key draws the count noise).

  Returns:
    b̃ (float32 scalar).

  Formal guarantees:
    ``aggregator.count(stats)`` has sensitivity ``aggregator.count_sensitivity()``; the output
    is the Gaussian mechanism with noise multiplier ``σ_b / count_sensitivity``.
  """
  noisy = noise.noisy_scalar(aggregator.count(stats), count_noise_std, privatizer_state)
  return noisy / normaliser + aggregator.count_offset()


__all__ = ["default_count_noise_multiplier", "geometric_update", "noisy_unclipped_fraction"]
