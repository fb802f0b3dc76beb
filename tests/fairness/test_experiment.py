"""Smoke and bad-input tests of the fairness experiments, configs and launch script."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import aps as aps_config
from configs import association as association_config
from configs import bias_auc_hatexplain, fairness_study
from trustml.core.validation import ConfigError
from trustml.fairness import experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tiny(config):
  config.train.num_steps = 4
  config.train.num_epochs = 0.0
  config.train.log_every = 2
  config.fairness.protected_num_epochs = 0.02
  config.fairness.bootstrap_samples = 10
  return config


@pytest.mark.parametrize(
  "mutate, match",
  [
    (lambda c: setattr(c.fairness, "task", "fairness"), "fairness.task"),
    (lambda c: setattr(c.fairness.aps, "reduction", "max"), "fairness.aps.reduction"),
    (lambda c: setattr(c.fairness, "her_counterpart", "hers"), "her_counterpart"),
    (lambda c: setattr(c.fairness, "threshold", 1.5), "fairness.threshold"),
    (lambda c: setattr(c.fairness, "task", "bias_auc"), "must be 'hatexplain'"),
    (lambda c: c.fairness.__setattr__("study_models", ("bag-x-s0", "cnn-8-s1")), None),
  ],
)
def test_invalid_configs_rejected_before_compute(mutate, match):
  config = aps_config.get_config("smoke")
  mutate(config)
  if match is None:  # study spec errors need the hatexplain data name first
    config.data.name = "hatexplain"
    config.fairness.task = "study"
    match = "study_models entry 'bag-x-s0'"
  with pytest.raises(ConfigError, match=match):
    experiment.validate_config(config)


def test_unknown_seat_test_and_empty_community_rejected_before_training(
  shared_data_dir, monkeypatch
):
  """The bias-AUC config used to train 962 steps before failing on these."""
  from trustml.train import loop  # noqa: PLC0415

  def no_training(*args, **kwargs):
    raise AssertionError("training started before validation")

  monkeypatch.setattr(loop, "fit", no_training)
  config = association_config.get_config("smoke")
  config.data.dir = str(shared_data_dir)
  config.fairness.seat_tests = ("sent-weat-nope",)
  with pytest.raises(ConfigError, match="seat test 'sent-weat-nope' is unknown"):
    experiment.run(config, "/nonexistent/never-written")
  config = bias_auc_hatexplain.get_config("smoke")
  config.data.dir = str(shared_data_dir)
  config.fairness.communities = ("Women", "Martians")
  with pytest.raises(ConfigError, match="communities entry 'Martians' is invalid: it is empty"):
    experiment.run(config, "/nonexistent/never-written")


def test_unknown_config_arg_rejected():
  with pytest.raises(ConfigError, match="not a known field"):
    aps_config.get_config("reduce=l2")


def test_configs_build():
  for mod in (aps_config, bias_auc_hatexplain, association_config, fairness_study):
    for arg in (None, "smoke"):
      c = mod.get_config(arg)
      assert c.fairness.task in experiment.TASKS
  assert len(experiment.parse_study_models(fairness_study.get_config().fairness.study_models)) >= 8


def test_launch_exits_nonzero_on_invalid_config(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.fairness",
      "--config=configs/aps.py:smoke,reduction=max",
      f"--workdir={tmp_path}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1
  assert "error: fairness.aps.reduction='max' is invalid" in proc.stderr
  assert not (tmp_path / "task").exists()  # nothing was computed
  proc = subprocess.run(
    [sys.executable, "-m", "launch.fairness", "--config=configs/aps.py:reduce=l2", "--workdir=x"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: config arg 'reduce'")


def test_aps_smoke(tmp_path):
  config = _tiny(aps_config.get_config("smoke"))
  config.fairness.num_examples = 48
  summary = experiment.run(config, tmp_path)
  for key in ("fairness/aps", "fairness/counterfactual_gap", "fairness/aps_gap_spearman"):
    assert key in summary
  assert summary["fairness/aps"] > 0 and summary["fairness/num_swapped"] > 0
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["fairness/aps"] == pytest.approx(summary["fairness/aps"])
  assert (tmp_path / "plots" / "accuracy_per_group.png").is_file()
  assert (tmp_path / "metrics.jsonl").is_file() and (tmp_path / "config.json").is_file()


def test_bias_auc_and_association_smoke(tmp_path, shared_data_dir):
  config = _tiny(association_config.get_config("smoke"))
  config.data.dir = str(shared_data_dir)
  summary = experiment.run_association(config, tmp_path / "assoc")
  assert np.isfinite(summary["association/effect_size"])
  assert 0.0 <= summary["association/p_value"] <= 1.0
  assert summary["association/ceat/tau2"] >= 0.0
  config.fairness.task = "bias_auc"
  summary = experiment.run(config, tmp_path / "bias")
  communities = summary["bias_auc/communities"].split(",")
  assert len(communities) == 10 and "Women" in communities
  for m in ("subgroup", "bpsn", "bnsp"):
    assert 0.0 < summary[f"bias_auc/gmb_{m}"] < 1.0
    assert summary[f"bias_auc/gmb_{m}"] <= summary[f"bias_auc/{m}"] + 1e-12  # p=-5 <= mean
    assert (tmp_path / "bias" / "plots" / f"bias_auc_{m}.png").is_file()


def test_crr_distill_is_dispatched_to_crr_run(monkeypatch, tmp_path):
  from configs import crr_distill
  from trustml.fairness import crr

  calls = []
  monkeypatch.setattr(crr, "run", lambda config, workdir: calls.append(workdir) or {"ok": 1})
  config = crr_distill.get_config("smoke")
  assert experiment.run(config, tmp_path) == {"ok": 1} and calls == [tmp_path]
