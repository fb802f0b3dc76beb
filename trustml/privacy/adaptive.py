"""Adaptive quantile clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021).

The clip norm follows a target quantile γ of the per-example gradient norms: after each step,
``C ← C · exp(−η (b̃ − γ))`` where ``b̃`` is the *noisy* fraction of examples whose norm was
≤ C, released by a Gaussian count query on the same sampled batch
(:func:`trustml.privacy.mechanism.make_grad_fn` with ``count_noise_multiplier``). Its privacy
cost is folded into the accounted noise multiplier by
:func:`trustml.privacy.accounting.effective_noise_multiplier`.
"""

import math
from collections.abc import Mapping
from typing import Any

from trustml.core import validation


def default_count_noise_multiplier(expected_batch_size: float) -> float:
  """σ_b = expected batch size / 20, the setting recommended by Andrew et al. (2021)."""
  validation.positive("expected_batch_size", expected_batch_size)
  return expected_batch_size / 20.0


def geometric_update(
  l2_clip_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
  """One geometric step of the clip norm towards the target quantile.

  Args:
    l2_clip_norm: current C > 0.
    unclipped_fraction: noisy fraction b̃ of examples with norm ≤ C (already privatised).
    target_quantile: γ in (0, 1).
    learning_rate: η > 0.

  Returns:
    ``C · exp(−η (b̃ − γ))``.

  Formal guarantees:
    Post-processing of the privatised b̃: no extra privacy cost beyond the count query.
  """
  return float(l2_clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile)))


def clip_update_fn(target_quantile: float, learning_rate: float):
  """A ledger ``clip_update_fn(C, aux) -> C`` reading ``aux["dp/unclipped_fraction"]``."""
  validation.in_range("privacy.target_quantile", target_quantile, 0.0, 1.0)
  validation.positive("privacy.clip_learning_rate", learning_rate)

  def update(clip: float, aux: Mapping[str, Any]) -> float:
    return geometric_update(
      clip, float(aux["dp/unclipped_fraction"]), target_quantile, learning_rate
    )

  return update


__all__ = ["clip_update_fn", "default_count_noise_multiplier", "geometric_update"]
