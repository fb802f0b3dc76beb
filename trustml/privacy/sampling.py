"""Batch sampling for DP-SGD: Poisson with fixed-shape padding, or fixed-size random subsets.

* ``poisson``: each example joins step ``t`` independently with probability ``q``
  (``trustml.data.batching.poisson_batch``, seeded by ``(seed, "sampling", t)``). The batch is
  padded with weight-0 rows to a static ``cap`` (a multiple of the physical batch size) so
  nothing recompiles. If more than ``cap`` examples are drawn, a uniformly random subset of
  ``cap`` is kept: **truncation**. :func:`poisson_cap` chooses ``cap`` so the probability that
  any step of the run truncates is below a budget, and the ledger adds it to δ
  (``δ_total = δ + (1 + e^ε)·Σ_t P(truncation at t)``; if M and M' differ only on an event of
  probability p, (ε, δ)-DP of M gives (ε, δ + (1 + e^ε)p)-DP of M').
* ``shuffle``: each step draws a fresh uniformly random subset of exactly ``B`` examples
  (without replacement inside the batch, independently across steps), the sampling that
  ``SampledWithoutReplacementDpEvent`` accounts under replace-one neighbouring.
"""

from collections.abc import Callable, Mapping

import numpy as np
from scipy import stats

from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.data import batching


def truncation_probability(dataset_size: int, sampling_rate: float, cap: int) -> float:
  """P(Binomial(N, q) > cap): the chance that one Poisson step is truncated."""
  return float(stats.binom.sf(cap, dataset_size, sampling_rate))


def poisson_cap(
  dataset_size: int,
  sampling_rate: float,
  physical_batch_size: int,
  num_steps: int,
  max_total_probability: float,
) -> int:
  """The smallest multiple of the physical batch whose run-wide truncation probability is small.

  Args:
    dataset_size: N.
    sampling_rate: q in (0, 1].
    physical_batch_size: micro-batch size P.
    num_steps: steps of the run.
    max_total_probability: bound on ``num_steps · P(Binomial(N, q) > cap)``.

  Returns:
    ``cap``, a multiple of P (at least P, at most N rounded up).
  """
  validation.positive_int("dataset_size", dataset_size)
  validation.in_range("privacy.sampling_rate", sampling_rate, 0.0, 1.0, high_inclusive=True)
  validation.positive_int("train.batch_size", physical_batch_size)
  cap = physical_batch_size
  ceiling = -(-dataset_size // physical_batch_size) * physical_batch_size
  while cap < ceiling:
    if (
      num_steps * truncation_probability(dataset_size, sampling_rate, cap) <= max_total_probability
    ):
      break
    cap += physical_batch_size
  return cap


def poisson_batch_fn(
  arrays: Mapping[str, np.ndarray], sampling_rate: float, cap: int, seed: int
) -> Callable[[int], dict[str, np.ndarray]]:
  """``batch_fn(step)`` of Poisson-sampled batches padded to ``cap`` rows.

  Adds ``dp_num_truncated`` (float32 scalar) to each batch.
  """

  def batch_fn(step: int) -> dict[str, np.ndarray]:
    batch, _, truncated = batching.poisson_batch(arrays, sampling_rate, cap, seed, step)
    batch["dp_num_truncated"] = np.float32(truncated)
    return batch

  return batch_fn


def shuffle_batch_fn(
  arrays: Mapping[str, np.ndarray], batch_size: int, seed: int
) -> Callable[[int], dict[str, np.ndarray]]:
  """``batch_fn(step)`` of uniformly random size-``batch_size`` subsets, fresh at every step."""
  n = batching.num_examples(arrays)
  validation.positive_int("privacy.virtual_batch_size", batch_size)
  if batch_size > n:
    raise validation.ConfigError(
      f"privacy.virtual_batch_size={batch_size} is invalid: must be <= the {n} training examples"
    )

  def batch_fn(step: int) -> dict[str, np.ndarray]:
    gen = rng_lib.numpy_rng(seed, "sampling", step)
    index = np.sort(gen.choice(n, size=batch_size, replace=False))
    batch = batching.take_padded(arrays, index, batch_size)
    batch["dp_num_truncated"] = np.float32(0.0)
    return batch

  return batch_fn


__all__ = [
  "poisson_batch_fn",
  "poisson_cap",
  "shuffle_batch_fn",
  "truncation_probability",
]
