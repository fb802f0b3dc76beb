"""DP training through the spine loop: smoke config, exact resume of the ledger, bad config."""

import json
import subprocess
import sys

import pytest

from configs import dp_nlu
from trustml import privacy
from trustml.privacy import accounting, training


def test_public_names():
  assert set(privacy.__all__) == {
    "PrivacyLedger",
    "accounting",
    "adaptive",
    "clipping",
    "config",
    "dp_aggregate",
    "ghost",
    "ledger",
    "make_grad_fn",
    "mechanism",
    "noise",
    "per_example",
    "sampling",
  }
  assert training.__all__ == ["build", "run"]


def test_smoke_run_resumes_with_the_same_epsilon(tmp_path):
  config = dp_nlu.get_config("smoke")
  first = training.run(config, tmp_path, stop_after_step=3)
  assert first == {"train/interrupted_at": 3}
  summary = training.run(config, tmp_path)
  assert summary["privacy/steps"] == summary["train/steps"] == 4
  sigma = summary["privacy/noise_multiplier"]
  direct = accounting.run_event(
    [(sigma, 4)], sampling="poisson", sampling_rate=summary["privacy/sampling_rate"]
  )
  assert summary["privacy/epsilon"] == pytest.approx(accounting.epsilon(direct, 1e-5), rel=1e-12)
  assert summary["privacy/epsilon"] <= 3.0
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  for key in ("epsilon", "delta", "noise_multiplier", "l2_clip_norm", "sampling_rate", "steps"):
    assert f"privacy/{key}" in on_disk
  assert on_disk["privacy/mechanism"] == "edp_sgd"


def test_launch_rejects_bad_privacy_config_before_compute(tmp_path, repo_root):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.train",
      "--config=configs/dp_nlu.py:smoke",
      "--config.privacy.delta=1.5",
      f"--workdir={tmp_path}",
    ],
    cwd=repo_root,
    capture_output=True,
    text=True,
    check=False,
  )
  assert out.returncode != 0
  assert "privacy.delta" in out.stderr.strip().splitlines()[-1]
