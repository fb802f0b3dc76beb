"""Selection frequencies match inclusion probabilities; weighting pairs; bad input.

Statistical tests use a fixed seed; each per-client z-test is two-sided at |z| > 4.5
(false-failure rate < 7e-6 per client, < 3e-4 over all clients and tests by Bonferroni).
"""

import numpy as np
import pytest

from trustml.core.validation import ConfigError
from trustml.federated import selection

SIZES = np.array([1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233])
ROUNDS = 4000


def _freq(sampler):
  counts = np.zeros(len(SIZES))
  lens = []
  for r in range(ROUNDS):
    s = selection.sample(sampler, SIZES, seed=7, round_index=r)
    assert len(np.unique(s)) == len(s)
    counts[s] += 1
    lens.append(len(s))
  return counts / ROUNDS, np.asarray(lens)


@pytest.mark.parametrize(
  "sampler",
  [
    selection.Sampler("uniform", 4),
    selection.Sampler("activity", 4, beta=1.0),
    selection.Sampler("activity", 4, beta=0.5),
    selection.Sampler("activity", 4, beta=1.0, mode="poisson"),
  ],
)
def test_frequencies_match_probabilities(sampler):
  pi = selection.inclusion_probabilities(sampler, SIZES)
  assert pi.sum() == pytest.approx(4.0)
  assert np.all(pi <= 1.0)
  if sampler.name == "activity":
    free = pi < 1
    ratio = pi[free] / SIZES[free] ** sampler.beta
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)  # propto n^beta below the cap
  freq, lens = _freq(sampler)
  se = np.sqrt(np.maximum(pi * (1 - pi), 1e-12) / ROUNDS)
  z = np.where(pi < 1, (freq - pi) / se, 0.0)
  assert np.all(np.abs(z) < 4.5), (freq, pi)
  np.testing.assert_array_equal(freq[pi >= 1], 1.0)
  if sampler.mode == "without_replacement":
    assert np.all(lens == 4)
  else:
    assert abs(lens.mean() - 4.0) < 4.5 * np.sqrt(pi @ (1 - pi) / ROUNDS)


def test_unbiased_pair_activity_uniform():
  """E[sum_sel v_i / m] under activity(beta=1) equals the n-weighted mean of v (exactly, by pi)."""
  sampler = selection.Sampler("activity", 3, beta=1.0)
  sizes = np.array([5, 10, 15, 20, 25, 30, 35, 40])
  pi = selection.inclusion_probabilities(sampler, sizes)
  v = np.arange(8.0)
  # Expectation over the design, from the exact inclusion probabilities: sum_i pi_i v_i / m.
  assert (pi @ v) / 3 == pytest.approx((sizes @ v) / sizes.sum())
  w = selection.aggregation_weights("inverse_probability", sizes, pi)
  assert (pi * w) @ v / sizes.sum() == pytest.approx((sizes @ v) / sizes.sum())


def test_bad_input():
  with pytest.raises(ConfigError, match="num_clients_per_round"):
    selection.sample(selection.Sampler("uniform", 13), SIZES, seed=0, round_index=0)
  with pytest.raises(ConfigError, match="sampler"):
    selection.sample(selection.Sampler("bogus", 2), SIZES, seed=0, round_index=0)
  with pytest.raises(ConfigError, match="empty client"):
    selection.inclusion_probabilities(selection.Sampler("uniform", 2), np.array([3, 0, 2]))
  with pytest.raises(ConfigError, match="weighting"):
    selection.aggregation_weights("bogus", SIZES)


def test_fixed_denominator_is_exactly_unbiased_and_self_normalized_is_not():
  """Uniform m=2 of N=6 (all 15 subsets equally likely), num_examples weights: enumeration."""
  import itertools  # noqa: PLC0415

  n = np.array([1.0, 2.0, 3.0, 5.0, 8.0, 40.0])
  delta = np.log(n) + np.array([0.3, -0.2, 0.1, 0.0, 0.4, -0.1])  # correlated with size
  target = (n * delta).sum() / n.sum()
  pi = selection.inclusion_probabilities(selection.Sampler("uniform", 2), n)
  d = selection.fixed_denominator("num_examples", n, pi)
  assert d == pytest.approx(2 / 6 * n.sum())
  subsets = [list(s) for s in itertools.combinations(range(6), 2)]
  fixed = np.mean([(n[s] * delta[s]).sum() / d for s in subsets])
  ratio = np.mean([(n[s] * delta[s]).sum() / n[s].sum() for s in subsets])
  assert fixed == pytest.approx(target, rel=1e-12)
  assert abs(ratio - target) > 0.05  # the self-normalised (Hajek) round is biased here
  # inverse_probability: D = sum n exactly, whatever the sampler (capped pi included).
  act = selection.Sampler("activity", 3, beta=1.0)
  pi_a = selection.inclusion_probabilities(act, n)
  assert pi_a.max() == 1.0  # the heavy client is capped
  assert selection.fixed_denominator("inverse_probability", n, pi_a) == n.sum()
  with pytest.raises(ConfigError, match="sizes has 6, inclusion has 5"):
    selection.fixed_denominator("uniform", n, pi_a[:5])


def test_activity_inverse_probability_is_uniform_and_fixed_size_estimators_coincide():
  sizes = np.array([2, 3, 5, 8, 13, 21, 34, 55, 89, 184], np.float64)  # uncapped at m = 2
  sampler = selection.Sampler("activity", num_clients_per_round=2, beta=1.0)
  pi = selection.inclusion_probabilities(sampler, sizes)
  assert pi.max() < 1.0
  w = selection.aggregation_weights("inverse_probability", sizes, pi)
  np.testing.assert_allclose(w, sizes.sum() / 2, rtol=1e-6)  # n_i / pi_i = sum n / m
  # Uniform weights with exactly m clients: D = sum pi_i = m = the sampled weight sum.
  assert selection.fixed_denominator("uniform", sizes, pi) == pytest.approx(2.0)
  chosen = selection.sample(sampler, sizes, seed=0, round_index=0)
  assert selection.aggregation_weights("uniform", sizes[chosen]).sum() == 2.0
  # num_examples weights: the sampled sum varies by round (a ratio estimator).
  sums = {
    float(sizes[selection.sample(sampler, sizes, seed=0, round_index=r)].sum()) for r in range(20)
  }
  assert len(sums) > 1
