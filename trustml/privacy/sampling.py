"""Batch sampling for DP-SGD: Poisson with fixed-shape padding, or fixed-size random subsets.

* ``poisson``: each example joins step ``t`` independently with probability ``q``
  (``trustml.data.batching.poisson_batch``, seeded by ``(seed, "sampling", t)``). The batch is
  padded with weight-0 rows to a static ``cap`` (a multiple of the physical batch size) so
  nothing recompiles. The coins come from the run's secret streams, never the public seed. If more than ``cap`` examples are drawn, a uniformly random subset of
  ``cap`` is kept: **truncation**. :func:`poisson_cap` chooses ``cap`` so the probability that
  any step of the run truncates is below a budget, and the ledger adds it to δ
  (``δ_total = δ + (1 + e^ε)·Σ_t P(truncation at t)``; if M and M' differ only on an event of
  probability p, (ε, δ)-DP of M gives (ε, δ + (1 + e^ε)p)-DP of M').
* ``shuffle``: each step draws a fresh uniformly random subset of exactly ``B`` examples
  (without replacement inside the batch, independently across steps), the sampling that
  ``SampledWithoutReplacementDpEvent`` accounts under replace-one neighbouring.
"""

from collections.abc import Mapping

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


def poisson_batch(
  arrays: Mapping[str, np.ndarray],
  sampling_rate: float,
  cap: int,
  secret: rng_lib.SecretStreams,
  step: int,
  num_blocks: int = 1,
) -> dict[str, np.ndarray]:
  """The Poisson-sampled batch of ``step`` padded to ``cap`` rows, from secret coins.

  Args:
    arrays: encoded training arrays.
    sampling_rate: q in (0, 1].
    cap: static rows (a multiple of the physical batch).
    secret: the run's secret streams (the coins are not derivable from the public seed).
    step: the step.
    num_blocks: contiguous blocks the batch is split into (the ``data`` devices); the sampled
      rows are dealt round-robin over them, so every block holds its real rows first and its
      padding last (what ``skip_padding`` needs). 1: real rows first, padding after.

  Returns:
    The batch (weight 0 on padding rows). The realised size and whether it was truncated are
    private and are not returned.

  Raises:
    ConfigError: if ``cap`` is not a multiple of ``num_blocks``.
  """
  validation.positive_int("mesh.num_data_shards", num_blocks)
  if cap % num_blocks:
    raise validation.ConfigError(
      f"cap={cap} is invalid: must be a multiple of the {num_blocks} data shards"
    )
  batch, _, _ = batching.poisson_batch(arrays, sampling_rate, cap, secret.entropy, step)
  if num_blocks == 1:
    return batch
  real = np.flatnonzero(batch["index"] >= 0)  # The first rows (take_padded pads at the end).
  per = cap // num_blocks
  slots = (real % num_blocks) * per + real // num_blocks
  source = np.empty(cap, np.int64)
  source[slots] = real
  free = np.ones(cap, bool)
  free[slots] = False
  source[free] = np.arange(real.shape[0], cap)
  return {k: v[source] for k, v in batch.items()}


def shuffle_batch(
  arrays: Mapping[str, np.ndarray], batch_size: int, secret: rng_lib.SecretStreams, step: int
) -> dict[str, np.ndarray]:
  """A uniformly random subset of exactly ``batch_size`` examples for ``step`` (secret coins).

  Raises:
    ConfigError: if ``batch_size`` exceeds the training examples.
  """
  n = batching.num_examples(arrays)
  validation.positive_int("privacy.virtual_batch_size", batch_size)
  if batch_size > n:
    raise validation.ConfigError(
      f"privacy.virtual_batch_size={batch_size} is invalid: must be <= the {n} training examples"
    )
  gen = secret.numpy("sampling", step)
  index = np.sort(gen.choice(n, size=batch_size, replace=False))
  return batching.take_padded(arrays, index, batch_size)


__all__ = [
  "poisson_batch",
  "poisson_cap",
  "shuffle_batch",
  "truncation_probability",
]
