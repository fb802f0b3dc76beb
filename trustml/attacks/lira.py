"""Membership-inference scores: loss threshold (Yeom et al. 2018) and LiRA (Carlini et al. 2022).

LiRA scores each candidate with the *logit-scaled confidence* ``φ = log p_y − log(1 − p_y)``,
computed from logits as ``z_y − logsumexp_{j≠y} z_j`` (no ``log(1 − p)`` cancellation when the
model is confident), then compares the target model's ``φ`` with Gaussians fitted to ``φ``
under shadow models that did (IN) and did not (OUT) train on the candidate:

* online: ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)``;
* offline: ``log Φ((φ − μ_out) / σ_out)``, a one-sided test against OUT only;
* fixed variance: the same, with one σ pooled over all candidates (better with few shadows).

JAX computes ``φ``; the Gaussian fits and likelihood ratios are NumPy/SciPy.
"""

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from trustml.core import validation

VARIANTS = ("online", "offline", "online_fixed_variance", "offline_fixed_variance")


def logit_scaled_confidence(
  logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> jax.Array:
  """``log p_y − log(1 − p_y)`` from logits, stably.

  Args:
    logits: ``[..., C]`` logits (C >= 2).
    labels: ``[...]`` int labels.

  Returns:
    ``[...]`` float32 scores; large when the model is confident in the label.

  Example:
    >>> float(logit_scaled_confidence(jnp.array([[2.0, 0.0]]), jnp.array([0]))[0])  # doctest: +ELLIPSIS
    2.0...
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=bool)
  z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  others = jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return z_y - others


def loss_scores(per_example_loss: ArrayLike) -> np.ndarray:
  """Loss-threshold attack score (Yeom et al. 2018): ``−loss`` (higher = member)."""
  return -np.asarray(per_example_loss, dtype=np.float64)


def shadow_masks(
  num_models: int, pool_size: int, seed: int, *, num_targets: int | None = None
) -> np.ndarray:
  """Deterministic IN/OUT masks: each candidate is IN for exactly half of the shadow models.

  Args:
    num_models: S >= 2 shadow models (even S balances IN/OUT exactly).
    pool_size: N candidates.
    seed: seed of the masks.
    num_targets: size of the target set the scores are wanted for (must fit in the pool).

  Returns:
    ``[S, N]`` bool; row s marks the candidates shadow model s trains on (about N/2).

  Raises:
    ConfigError: if ``num_models < 2``, ``pool_size < 1`` or the pool is smaller than the
      target set.
  """
  if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 2:
    raise validation.ConfigError(
      f"num_shadow_models={num_models!r} is invalid: must be an integer >= 2"
    )
  validation.positive_int("pool_size", pool_size)
  if num_targets is not None and num_targets > pool_size:
    raise validation.ConfigError(
      f"pool_size={pool_size} is invalid: the candidate pool must hold the target set of "
      f"{num_targets} examples"
    )
  rng = np.random.default_rng(seed)
  ranks = np.argsort(rng.random((num_models, pool_size)), axis=0)
  return ranks < num_models // 2


def _fit(values: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  count = where.sum(0)
  mean = np.where(where, values, 0.0).sum(0) / np.maximum(count, 1)
  var = np.where(where, (values - mean) ** 2, 0.0).sum(0) / np.maximum(count - 1, 1)
  return mean, np.sqrt(var)


def lira_scores(
  target_stats: ArrayLike,
  shadow_stats: ArrayLike,
  shadow_in: ArrayLike,
  *,
  variant: str = "online",
  min_std: float = 1e-3,
) -> np.ndarray:
  """LiRA membership scores (higher = member).

  Args:
    target_stats: ``[N]`` logit-scaled confidences of the target model on N candidates.
    shadow_stats: ``[S, N]`` the same statistic under each of S shadow models.
    shadow_in: ``[S, N]`` bool, whether shadow s trained on candidate n.
    variant: one of ``VARIANTS``.
    min_std: floor on fitted standard deviations.

  Returns:
    ``[N]`` scores.

  Raises:
    ConfigError: on shape mismatch, an unknown variant, or fewer than 2 shadow models.
  """
  validation.one_of("variant", variant, VARIANTS)
  x = np.asarray(target_stats, dtype=np.float64).reshape(-1)
  s = np.asarray(shadow_stats, dtype=np.float64)
  m = np.asarray(shadow_in).astype(bool)
  if s.ndim != 2 or s.shape != m.shape or s.shape[1] != x.shape[0]:
    raise validation.ConfigError(
      f"shadow_stats {s.shape} and shadow_in {m.shape} must be [S, N] with N={x.shape[0]}"
    )
  if s.shape[0] < 2:
    raise validation.ConfigError(f"num_shadow_models={s.shape[0]} is invalid: must be >= 2")
  mu_in, sd_in = _fit(s, m)
  mu_out, sd_out = _fit(s, ~m)
  if variant.endswith("fixed_variance"):
    sd_in = np.full_like(sd_in, np.sqrt(np.mean(sd_in**2)))
    sd_out = np.full_like(sd_out, np.sqrt(np.mean(sd_out**2)))
  sd_in, sd_out = np.maximum(sd_in, min_std), np.maximum(sd_out, min_std)
  if variant.startswith("online"):
    return stats.norm.logpdf(x, mu_in, sd_in) - stats.norm.logpdf(x, mu_out, sd_out)
  return stats.norm.logcdf(x, mu_out, sd_out)


__all__ = ["VARIANTS", "lira_scores", "logit_scaled_confidence", "loss_scores", "shadow_masks"]
