"""Oracle and statistical tests for trustml.attacks.audit."""

import math

import numpy as np
import pytest
from scipy import stats

from trustml.attacks import audit
from trustml.core.validation import ConfigError


def test_clopper_pearson_matches_beta_quantiles():
  k = np.array([0, 1, 7, 50, 100])
  n = 100
  lo, hi = audit.clopper_pearson(k, n, confidence=0.9)
  for i, ki in enumerate(k):
    exp_lo = 0.0 if ki == 0 else stats.beta.ppf(0.05, ki, n - ki + 1)
    exp_hi = 1.0 if ki == n else stats.beta.ppf(0.95, ki + 1, n - ki)
    assert lo[i] == pytest.approx(exp_lo, abs=1e-12)
    assert hi[i] == pytest.approx(exp_hi, abs=1e-12)
  # Coverage identity: P[Bin(n, lo) >= k] = alpha/2 at the lower limit.
  assert stats.binom.sf(6, n, lo[2]) == pytest.approx(0.05, rel=1e-6)


def _gaussian_delta(eps: float, mu: float) -> float:
  """δ(ε) of the μ-GDP Gaussian mechanism (Dong, Roth & Su 2019)."""
  return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)


def test_threshold_audit_never_exceeds_true_epsilon():
  # Gaussian mechanism with sensitivity 1 and σ = 1/μ: IN ~ N(μ, 1), OUT ~ N(0, 1) in units of σ.
  # It is (ε, δ(ε))-DP for every ε. Each audit holds with prob >= 0.99; 10 independent
  # audits all hold with prob >= 0.9 (union bound), i.e. false-failure rate <= 10 % a priori;
  # the seed is fixed so the outcome is deterministic.
  mu, eps_true = 2.0, 2.0
  delta = _gaussian_delta(eps_true, mu)
  rng = np.random.default_rng(1234)
  bounds = []
  for rep in range(10):
    s_in = rng.normal(mu, 1.0, 20000)
    s_out = rng.normal(0.0, 1.0, 20000)
    res = audit.threshold_audit(s_in, s_out, delta=delta, confidence=0.99, seed=rep)
    bounds.append(res.epsilon_lower_bound)
  assert max(bounds) <= eps_true
  assert min(bounds) > 0.5  # and the audit has power: clearly above 0


def test_epsilon_at_thresholds_is_zero_without_signal():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(2, 5000))
  res = audit.threshold_audit(s[0], s[1], delta=1e-5, confidence=0.95, seed=0)
  assert res.epsilon_lower_bound < 0.2


def test_one_run_p_value_reduces_to_binomial_without_delta():
  p = audit.one_run_p_value(100, 40, 30, 1.0, 0.0)
  q = 1 / (1 + math.exp(-1.0))
  assert p == pytest.approx(stats.binom.sf(29, 40, q))
  assert audit.one_run_p_value(100, 40, 30, 1.0, 1e-3) > p


def test_one_run_audit_randomized_response_is_sound():
  # Scores from ε-DP randomized response on each canary's inclusion bit: the audit must not
  # exceed ε; with prob >= 0.95 each, 5 repetitions at a fixed seed.
  eps_true = 2.0
  rng = np.random.default_rng(7)
  for _ in range(5):
    included = rng.random(2000) < 0.5
    keep = rng.random(2000) < math.exp(eps_true) / (1 + math.exp(eps_true))
    reported = np.where(keep, included, ~included).astype(float) + 1e-3 * rng.random(2000)
    res = audit.one_run_audit(
      reported,
      included,
      delta=0.0,
      num_positive_guesses=500,
      num_negative_guesses=500,
      confidence=0.95,
    )
    assert res.epsilon_lower_bound <= eps_true
    assert res.epsilon_lower_bound > 1.0


def test_one_run_audit_rejects_bad_guesses():
  with pytest.raises(ConfigError):
    audit.one_run_audit(np.zeros(10), np.zeros(10), delta=0.0, num_positive_guesses=11)
  with pytest.raises(ConfigError):
    audit.one_run_audit(np.zeros(10), np.zeros(10), delta=0.0, num_positive_guesses=0)
