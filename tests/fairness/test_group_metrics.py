"""Tests of trustml.fairness.group_metrics against scikit-learn and hand computations."""

import fairlearn.metrics
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from trustml.core import rng as rng_lib
from trustml.core.validation import ConfigError
from trustml.fairness import group_metrics


@pytest.fixture(scope="module")
def table():
  rng = np.random.default_rng(0)
  n = 400
  groups = rng.random((n, 3)) < np.array([0.2, 0.3, 0.15])
  valid = groups.any(1) | (rng.random(n) < 0.5)
  labels = (rng.random(n) < 0.4 + 0.3 * groups[:, 0]).astype(int)
  scores = labels * 0.8 + rng.normal(size=n) + 0.5 * groups[:, 1]
  scores[:50] = np.round(scores[:50])  # ties
  return labels, scores, groups, valid


def test_overall_auc_is_sklearn_and_rejects_bad_input(table):
  labels, scores, groups, valid = table
  assert group_metrics.overall_auc(labels, scores) == metrics.roc_auc_score(labels, scores)
  with pytest.raises(ConfigError, match="both classes"):
    group_metrics.overall_auc([1, 1], [0.2, 0.3])
  bad = scores.copy()
  bad[7] = np.nan  # one NaN used to turn every AUC into NaN silently
  with pytest.raises(ConfigError, match="scores is invalid: must be finite.*index 7"):
    group_metrics.overall_auc(labels, bad)
  with pytest.raises(ConfigError, match="scores is invalid: must be finite"):
    group_metrics.bias_aucs(labels, bad, groups, valid)
  with pytest.raises(ConfigError, match="labels has 400, scores has 399"):
    group_metrics.bias_aucs(labels, scores[:-1], groups, valid)
  with pytest.raises(ConfigError, match="labels has 400, valid has 10"):
    group_metrics.bias_aucs(labels, scores, groups, valid[:10])


def test_bias_aucs_equal_sklearn_on_subsets(table):
  labels, scores, groups, valid = table
  out = group_metrics.bias_aucs(labels, scores, groups, valid)
  for j in range(groups.shape[1]):
    g = groups[:, j] & valid
    bg = valid & ~groups[:, j]
    y = labels.astype(bool)
    subsets = {"subgroup": g, "bpsn": (bg & y) | (g & ~y), "bnsp": (bg & ~y) | (g & y)}
    for method, mask in subsets.items():
      ref = metrics.roc_auc_score(labels[mask], scores[mask])
      assert out[method][j] == pytest.approx(ref, abs=1e-12), (method, j)


def test_invalid_posts_excluded_from_background(table):
  labels, scores, groups, valid = table
  out = group_metrics.bias_aucs(labels, scores, groups, valid)
  everything = group_metrics.bias_aucs(labels, scores, groups, None)
  assert not np.allclose(out["bpsn"], everything["bpsn"])
  # Every group member is valid here, so the subgroup AUC does not depend on the universe.
  np.testing.assert_allclose(out["subgroup"], everything["subgroup"])


def test_empty_and_one_class_subgroups_rejected(table):
  labels, scores, groups, valid = table
  empty = groups.copy()
  empty[:, 1] = False
  with pytest.raises(ConfigError, match="'women' is empty"):
    group_metrics.bias_aucs(labels, scores, empty, valid, ["a", "women", "c"])
  one_class = groups.copy()
  labels2 = labels.copy()
  labels2[groups[:, 2]] = 1
  with pytest.raises(ConfigError, match="one class"):
    group_metrics.bias_aucs(labels2, scores, one_class, valid)


def test_gmb_hand_tables_and_scipy():
  # M_{-5}(0.5, 1.0) = ((0.5^-5 + 1) / 2)^(-1/5) = (33/2)^(-1/5)
  assert group_metrics.gmb([0.5, 1.0]) == pytest.approx((33 / 2) ** (-0.2))
  assert group_metrics.gmb([0.8, 0.8, 0.8]) == pytest.approx(0.8)
  assert group_metrics.gmb([1, 2, 4], p=0) == pytest.approx(2.0)
  assert group_metrics.gmb([1, 4], p=2) == pytest.approx(np.sqrt(8.5))
  v = [0.6, 0.7, 0.9, 0.95]
  assert group_metrics.gmb(v) == stats.pmean(v, -5)
  assert group_metrics.gmb([0.0, 0.5]) == 0.0  # the p < 0 limit
  for bad in ([-0.1, 0.5], [], [np.nan, 0.5]):
    with pytest.raises(ConfigError):
      group_metrics.gmb(bad)
  with pytest.raises(ConfigError):
    group_metrics.gmb([0.0, 0.5], p=0)


def test_parity_and_odds_hand_table():
  labels = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 0])
  preds = np.array([1, 0, 1, 0, 1, 1, 0, 0, 0, 1])
  group = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, -1])
  # selection rate: g0 = 2/4, g1 = 2/4 -> 0.
  assert group_metrics.demographic_parity_difference(preds, group) == pytest.approx(0.0)
  # TPR g0 = 1/2, g1 = 1; FPR g0 = 1/2, g1 = 0 -> max gap 0.5.
  assert group_metrics.equalized_odds_difference(labels, preds, group) == pytest.approx(0.5)
  acc = group_metrics.per_group_accuracy(labels, preds, group)
  assert acc == {0: 0.5, 1: 1.0}
  # fairlearn-style sensitive features (strings) give the same numbers as fairlearn itself.
  names = np.array(["f", "f", "f", "f", "m", "m", "m", "m", "x", "x"])
  keep = group >= 0
  assert group_metrics.equalized_odds_difference(
    labels[keep], preds[keep], names[keep]
  ) == fairlearn.metrics.equalized_odds_difference(
    labels[keep], preds[keep], sensitive_features=names[keep]
  )
  frame = group_metrics.per_group_table(labels, preds, names)
  assert frame.by_group["accuracy"].to_dict() == {"f": 0.5, "m": 1.0, "x": 0.0}
  assert frame.by_group["count"].to_dict() == {"f": 4, "m": 4, "x": 2}
  with pytest.raises(ConfigError, match="labels has 10, predictions has 9"):
    group_metrics.equalized_odds_difference(labels, preds[:-1], group)
  with pytest.raises(ConfigError, match=r"sensitive_features with shape \(9,\)"):
    group_metrics.demographic_parity_difference(preds, group[:-1])
  preds2 = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1])
  assert group_metrics.demographic_parity_difference(preds2, group) == pytest.approx(0.75)
  with pytest.raises(ConfigError, match="two groups"):
    group_metrics.demographic_parity_difference(preds, np.zeros(10, int))


def test_bootstrap_ci_covers_and_is_deterministic():
  rng = np.random.default_rng(1)
  x = rng.normal(loc=2.0, size=500)
  lo, hi = group_metrics.bootstrap_ci(np.mean, [x], num_samples=300, seed=3)
  lo2, hi2 = group_metrics.bootstrap_ci(np.mean, [x], num_samples=300, seed=3)
  assert lo == lo2 and hi == hi2
  assert lo < x.mean() < hi
  se = x.std(ddof=1) / np.sqrt(x.size)  # normal approx: width ~ 2 * 1.96 * se
  assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.25)
  ref = stats.bootstrap(
    (x,), np.mean, n_resamples=300, method="percentile", rng=rng_lib.numpy_rng(3, "bootstrap")
  ).confidence_interval
  assert lo == pytest.approx(ref.low) and hi == pytest.approx(ref.high)
  with pytest.raises(ConfigError, match="arrays\\[0\\] has 500, arrays\\[1\\] has 3"):
    group_metrics.bootstrap_ci(np.mean, [x, x[:3]])


def test_hatexplain_protocol():
  ann = [
    [["Refugee"], ["Refugee"], ["None"]],
    [["Arab", "Islam", "Jewish"], ["Islam", "Jewish"], ["Islam", "Jewish"]],
    [["None"], ["None"], ["Hispanic"]],
    [["Women", "Other"], ["Other"], ["Women"]],
  ]
  targets = group_metrics.majority_targets(ann)
  assert targets == [("Refugee",), ("Islam", "Jewish"), ("None",), ("Other", "Women")]
  top = group_metrics.top_communities(targets, k=3)
  assert top == ["Islam", "Jewish", "Refugee"]
  m = group_metrics.membership(targets, top)
  assert m.tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]]
  assert group_metrics.toxic_from_annotations([[2, 1, 1], [0, 0, 2], [1, 1, 1], [0, 2, 1]]).tolist() == [
    0, 1, 0, 1,
  ]  # fmt: skip
  summary = group_metrics.summarize_bias_aucs(
    {"subgroup": np.array([0.5, 1.0]), "bpsn": np.array([0.8]), "bnsp": np.array([0.9])}
  )
  assert summary["bias_auc/gmb_bpsn"] == pytest.approx(0.8)


def test_hatexplain_top10_equals_the_papers_list(shared_data_dir):
  import json

  targets, labels = [], []
  for split in ("test.jsonl", "validation.jsonl"):
    with open(shared_data_dir / "hatexplain" / split, encoding="utf-8") as f:
      posts = [json.loads(line) for line in f if line.strip()]
    targets += group_metrics.majority_targets([p["annotators"]["target"] for p in posts])
    labels += [p["annotators"]["label"] for p in posts]
  top = group_metrics.top_communities(targets, k=10)
  # Mathew et al. (2021), Bias_Calculation_NB.ipynb: the 10 communities of the bias metrics.
  paper = ["African", "Islam", "Jewish", "Homosexual", "Women", "Refugee", "Arab", "Caucasian"]
  assert set(top) == set(paper + ["Asian", "Hispanic"])
  assert top[:3] == ["African", "Islam", "Jewish"]
  toxic = group_metrics.toxic_from_annotations(labels)
  # README counts: test normal 782 / 1924 and validation 781 / 1922 (majority labels).
  assert int((toxic == 0).sum()) == 782 + 781
