"""Public API of trustml.attacks and the study summary (Spearman correlation, table, plot)."""

import json
import math

import numpy as np
import pytest
from scipy import stats

import trustml.attacks as attacks
from trustml.attacks import study


def test_public_api():
  assert attacks.__all__ == [
    "audit",
    "exposure",
    "extraction",
    "lira",
    "metrics",
    "run",
    "shadow",
    "study",
  ]
  assert set(attacks.metrics.__all__) >= {"roc_curve", "tpr_at_fpr", "plot_roc"}
  assert set(attacks.audit.__all__) >= {"clopper_pearson", "threshold_audit", "one_run_audit"}
  assert set(attacks.lira.__all__) >= {"lira_scores", "logit_scaled_confidence", "shadow_masks"}
  assert set(attacks.exposure.__all__) >= {"SecretSpace", "exact_exposure", "extrapolated_exposure"}
  assert set(attacks.extraction.__all__) == {
    "ExtractionConfig",
    "ExtractionResult",
    "extract_secret",
  }
  assert set(attacks.shadow.__all__) >= {"train_shadow_models", "train_one"}


def _table():
  eps = [math.inf, 8.0, 4.0, 2.0, 1.0, 0.5]
  auc = [0.9, 0.7, 0.62, 0.55, 0.52, 0.5]
  rows = [
    {
      "name": f"eps_{e}",
      "privacy/epsilon": e,
      "mia/auc": a,
      "eval/accuracy": 0.9,
      "canary/exposure_mean": 13 - i,
      "audit/epsilon_lower_bound": 2.0 / (i + 1),
      "mia/tpr_at_0.001_fpr": 0.1,
      "canary/extraction_exact_match": 0.5 if i == 0 else 0.0,
    }
    for i, (e, a) in enumerate(zip(eps, auc, strict=True))
  ]
  rows.append({"name": "defense_dropout0.3", "privacy/epsilon": math.inf, "mia/auc": 0.1})
  return rows


def test_summarize_spearman_matches_scipy():
  out = study.summarize(_table())
  assert out["num_rows"] == 6  # the defense row is left out
  ref = stats.spearmanr([1e9, 8, 4, 2, 1, 0.5], [0.9, 0.7, 0.62, 0.55, 0.52, 0.5])
  assert out["spearman/mia/auc"] == pytest.approx(ref.statistic) == pytest.approx(1.0)
  assert np.isnan(out["spearman/mia/tpr_at_0.001_fpr"])  # constant column: undefined


def test_summarize_dir_writes_table_and_plot(tmp_path):
  for row in _table():
    d = tmp_path / row["name"]
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({k: v for k, v in row.items() if k != "name"}))
  study.summarize_dir(str(tmp_path))
  md = (tmp_path / "study.md").read_text()
  assert "| eps_inf | ∞ |" in md and "Spearman" in md
  assert (tmp_path / "plots" / "privacy_utility_leakage.png").stat().st_size > 1000
