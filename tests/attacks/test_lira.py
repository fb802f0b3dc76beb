"""Tests for trustml.attacks.lira."""

import jax.numpy as jnp
import numpy as np
import pytest

from trustml.attacks import lira, metrics
from trustml.core.validation import ConfigError


def test_logit_scaled_confidence_matches_float64_and_is_stable():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(50, 7)) * 3
  labels = rng.integers(0, 7, 50)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  py = p[np.arange(50), labels]
  expected = np.log(py) - np.log1p(-py)
  got = np.asarray(lira.logit_scaled_confidence(jnp.asarray(logits), jnp.asarray(labels)))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # Very confident: naive float32 log(1 - p) gives inf; the stable form gives z_y - z_other.
  big = jnp.array([[60.0, 0.0, -5.0]])
  val = float(lira.logit_scaled_confidence(big, jnp.array([0]))[0])
  assert val == pytest.approx(60.0 - np.log(1 + np.exp(-5.0)), rel=1e-5)


def test_shadow_masks_balanced_and_deterministic():
  m = lira.shadow_masks(8, 100, seed=3)
  assert m.shape == (8, 100)
  np.testing.assert_array_equal(m.sum(0), 4)
  np.testing.assert_array_equal(m, lira.shadow_masks(8, 100, seed=3))
  with pytest.raises(ConfigError, match="num_shadow_models"):
    lira.shadow_masks(1, 100, seed=0)


@pytest.mark.parametrize("variant", lira.VARIANTS)
def test_lira_finds_members_in_planted_case(variant):
  # Each candidate has its own baseline difficulty b_n; training on it adds +3 to φ.
  rng = np.random.default_rng(0)
  s, n = 16, 400
  b = rng.normal(0, 3, n)
  masks = lira.shadow_masks(s, n, seed=1)
  shadow = b + 3.0 * masks + rng.normal(0, 0.5, (s, n))
  member = rng.random(n) < 0.5
  target = b + 3.0 * member + rng.normal(0, 0.5, n)
  scores = lira.lira_scores(target, shadow, masks, variant=variant)
  auc = metrics.roc_curve(scores, member).auc
  assert auc > 0.97
  # The baseline-free loss attack is much weaker here (per-example difficulty hides members).
  assert metrics.roc_curve(target, member).auc < auc - 0.1


def test_lira_rejects_bad_shapes():
  with pytest.raises(ConfigError):
    lira.lira_scores(np.zeros(3), np.zeros((1, 3)), np.zeros((1, 3), bool))
  with pytest.raises(ConfigError):
    lira.lira_scores(np.zeros(3), np.zeros((4, 2)), np.zeros((4, 2), bool))
  with pytest.raises(ConfigError):
    lira.lira_scores(np.zeros(3), np.zeros((4, 3)), np.zeros((4, 3), bool), variant="bogus")


def test_pool_smaller_than_target_set_is_rejected():
  with pytest.raises(ConfigError, match="pool_size"):
    lira.shadow_masks(4, 10, seed=0, num_targets=11)
