"""Oracle tests for trustml.attacks.metrics."""

import numpy as np
import pytest
from sklearn import metrics as skm

from trustml.attacks import metrics
from trustml.core.validation import ConfigError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_roc_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 500)
  scores = rng.normal(size=500) + 0.7 * labels
  scores[:50] = np.round(scores[:50], 1)  # some ties
  fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
  curve = metrics.roc_curve(scores, labels)
  assert curve.auc == skm.roc_auc_score(labels, scores)
  assert curve.auc == pytest.approx(np.trapezoid(curve.tpr, curve.fpr), abs=1e-12)
  np.testing.assert_allclose(curve.fpr, fpr)
  np.testing.assert_allclose(curve.tpr, tpr)


def test_tpr_at_fpr_hand_table():
  # 4 members scored 4,3,1,0.5 and 4 non-members scored 2,0,-1,-2:
  # ROC points (0,0) (0,.25) (0,.5) (.25,.5) (.25,.75) (.25,1.0)... computed by hand below.
  scores = [4, 3, 1, 0.5, 2, 0, -1, -2]
  labels = [1, 1, 1, 1, 0, 0, 0, 0]
  curve = metrics.roc_curve(scores, labels)
  np.testing.assert_allclose(curve.fpr, [0, 0, 0, 0.25, 0.25, 0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(curve.tpr, [0, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])
  assert metrics.tpr_at_fpr(curve, 0.1) == pytest.approx(0.5)  # flat part after the top of (0, .5)
  assert metrics.tpr_at_fpr(curve, 0.25) == pytest.approx(1.0)  # top of the vertical rise
  assert metrics.tpr_at_fpr(curve, 0.5) == pytest.approx(1.0)
  # A sloped segment: members 2, 0; non-members 1, -1 -> (0,0) (0,.5) (.5,.5) (.5,1) (1,1).
  curve2 = metrics.roc_curve([2, 1, 0, -1], [1, 0, 1, 0])
  assert metrics.tpr_at_fpr(curve2, 0.25) == pytest.approx(0.5)
  # Strictly sloped segment from a tie: member and non-member share a score.
  curve3 = metrics.roc_curve([1, 1, 0, 0], [1, 0, 1, 0])  # (0,0) (.5,.5) (1,1)
  assert metrics.tpr_at_fpr(curve3, 0.1) == pytest.approx(0.1)
  assert metrics.tpr_at_fpr(curve3, 0.75) == pytest.approx(0.75)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_tpr_at_fpr_rejects_out_of_range(bad):
  curve = metrics.roc_curve([1, 0], [1, 0])
  with pytest.raises(ConfigError, match="fpr"):
    metrics.tpr_at_fpr(curve, bad)


def test_balanced_accuracy_and_advantage():
  curve = metrics.roc_curve([2, 1, 0, -1], [1, 0, 1, 0])
  assert metrics.membership_advantage(curve) == pytest.approx(0.5)
  assert metrics.balanced_accuracy(curve) == pytest.approx(0.75)
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 300)
  s = rng.normal(size=300) + y
  best = max(
    skm.balanced_accuracy_score(y, (s >= t).astype(int)) for t in np.r_[np.inf, np.unique(s)]
  )
  assert metrics.balanced_accuracy(metrics.roc_curve(s, y)) == pytest.approx(best)


def test_tradeoff_bounds():
  fpr = np.array([0.0, 1e-3, 0.1, 0.5, 1.0])
  b = metrics.dp_tradeoff_bound(fpr, 1.0, 1e-5)
  np.testing.assert_allclose(b[:3], np.e * fpr[:3] + 1e-5)
  assert b[-1] == 1.0
  prof = metrics.profile_tradeoff_bound(fpr, [0.5, 1.0, 2.0], [0.1, 1e-5, 1e-9])
  assert np.all(prof <= b + 1e-15)
  assert np.all(metrics.dp_tradeoff_bound(fpr, float("inf"), 0.0) == 1.0)


def test_plot_roc_writes_png(tmp_path):
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 200)
  curve = metrics.roc_curve(rng.normal(size=200) + y, y)
  path = tmp_path / "plots" / "roc.png"
  metrics.plot_roc(
    {"loss": curve},
    str(path),
    epsilon=2.0,
    delta=1e-5,
    tradeoff_fn=lambda f: metrics.dp_tradeoff_bound(f, 1.5, 1e-5),
  )
  assert path.stat().st_size > 1000


def test_roc_rejects_bad_input():
  with pytest.raises(ConfigError):
    metrics.roc_curve([1, 2], [1, 1])
  with pytest.raises(ConfigError, match="scores is invalid: must be finite"):
    metrics.roc_curve([1, np.nan], [1, 0])
  with pytest.raises(ConfigError, match="scores has 3, labels has 2"):
    metrics.roc_curve([1, 2, 3], [1, 0])
