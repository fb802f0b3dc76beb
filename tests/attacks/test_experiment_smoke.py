"""End-to-end smoke: train-then-attack (LiRA, 2 shadows) on the embedded corpus, then re-attack."""

import json
import math

import pytest

from trustml.attacks import experiment

KEYS = (
  "mia/auc",
  "mia/tpr_at_0.001_fpr",
  "mia/tpr_at_0.01_fpr",
  "audit/epsilon_lower_bound",
  "canary/exposure_mean",
  "canary/extraction_exact_match",
  "canary/extraction_token_accuracy",
)


@pytest.mark.slow
def test_smoke_run_and_reattack(tmp_path):
  import pathlib  # noqa: PLC0415
  import sys  # noqa: PLC0415

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  from configs import attack as attack_config  # noqa: PLC0415

  config = attack_config.get_config("smoke,model=bag,shadows=2")  # LiRA path too
  summary = experiment.run(config, tmp_path)
  for k in KEYS:
    assert k in summary and math.isfinite(summary[k]), k
  assert 0.0 <= summary["mia/auc"] <= 1.0
  assert 0.0 <= summary["canary/exposure_mean"] <= math.log2(1e4) + 1e-9
  assert (tmp_path / "plots" / "roc.png").exists()
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk["mia/auc"] == pytest.approx(summary["mia/auc"])
  again = experiment.attack_workdir(tmp_path)  # attack the trained workdir: same numbers
  for k in KEYS:
    assert again[k] == pytest.approx(summary[k], abs=1e-6), k
