"""The study's pure parts and the HateXplain bias-AUC report, against scipy/sklearn/fairlearn."""

import fairlearn.metrics
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from trustml.core import plots
from trustml.core.validation import ConfigError
from trustml.fairness import group_metrics, study


def _rows(n=6, seed=0):
  gen = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    r = {"model": f"m{i}", "eval/accuracy": float(gen.random())}
    for k in (*study.INTRINSIC, *study.EXTRINSIC, "fairness/aps_gap_spearman"):
      r[k] = float(gen.normal())
    rows.append(r)
  return rows


def test_correlation_tables_equal_scipy():
  rows = _rows()
  summary, table = study.correlation_tables(rows)
  i, e = study.INTRINSIC[0], study.EXTRINSIC[3]
  x, y = [r[i] for r in rows], [r[e] for r in rows]
  assert summary[f"study/pearson/{i}~{e}"] == pytest.approx(stats.pearsonr(x, y)[0])
  assert summary[f"study/spearman/{i}~{e}"] == pytest.approx(stats.spearmanr(x, y)[0])
  assert table.count("\n| m") == len(rows) and "| intrinsic | extrinsic |" in table
  assert np.isnan(study.correlations([1.0, 2.0], [3.0, 4.0])["pearson"])


def test_parse_study_models():
  specs = study.parse_study_models(["cnn-32-s1", "bag-8-s0"])
  assert specs[0].name == "cnn-32-s1" and specs[1].width == 8
  assert study.study_model_config(specs[0]).embed_dim == 32
  with pytest.raises(ConfigError, match="study_models entry 'cnn32'"):
    study.parse_study_models(["cnn32"])


def test_bias_auc_report_equals_sklearn_and_fairlearn():
  gen = np.random.default_rng(0)
  n = 600
  member = gen.random((n, 3)) < np.array([0.3, 0.25, 0.2])
  valid = member.any(1)
  labels = (gen.random(n) < 0.4 + 0.2 * member[:, 0]).astype(int)
  scores = labels * 0.7 + gen.normal(size=n)
  summary, per = group_metrics.bias_auc_report(
    labels, scores, member, valid, ["a", "b", "c"], threshold=0.5, bootstrap_samples=50, seed=0
  )
  g = member[:, 1] & valid
  assert per["subgroup"][1] == metrics.roc_auc_score(labels[g], scores[g])
  assert summary["bias_auc/gmb_subgroup"] == pytest.approx(stats.pmean(per["subgroup"], -5))
  assert summary["bias_auc/gmb_subgroup_ci_low"] <= summary["bias_auc/gmb_subgroup"]
  assert summary["bias_auc/overall_auc"] == metrics.roc_auc_score(labels, scores)
  single = member.sum(1) == 1
  sf = member.argmax(1)[single]
  pred = (scores >= 0.5).astype(int)
  assert summary["bias_auc/dp_difference"] == pytest.approx(
    fairlearn.metrics.demographic_parity_difference(
      labels[single], pred[single], sensitive_features=sf
    )
  )
  assert summary["bias_auc/communities"] == "a,b,c"


def test_bar_chart_with_ci_and_chance(tmp_path):
  out = plots.bar_chart(
    tmp_path / "p" / "b.png", {"x": 0.6, "y": 0.7}, ylabel="AUC", title="t",
    ci={"x": (0.5, 0.7)}, chance=0.5,
  )  # fmt: skip
  assert (tmp_path / "p" / "b.png").stat().st_size > 1000 and out.axes[0].get_ylabel() == "AUC"
  plots.scatter_plot(tmp_path / "s.png", [1, 2], [3, 4], xlabel="a", ylabel="b")
  assert (tmp_path / "s.png").is_file()
