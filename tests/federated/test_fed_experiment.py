"""End-to-end runs (smoke configs), exact resume, the run contract and bad configs."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import fed_lm_shakespeare, fed_nlu, fed_selection
from trustml.core.validation import ConfigError
from trustml.federated import experiment
from trustml.privacy import accounting
from trustml.train import writers


def _mutate(config, **fields):
  for dotted, value in fields.items():
    section, key = dotted.split("__")
    config[section][key] = value
  return config


@pytest.mark.parametrize(
  "fields, match",
  [
    ({"partition__kind": "dirichlet", "partition__alpha": 0.0}, "partition.alpha"),
    ({"partition__kind": "dirichlet", "partition__alpha": -2.0}, "partition.alpha"),
    ({"algorithm__name": "fedsgdx"}, "algorithm.name"),
    ({"selection__sampler": "greedy"}, "selection.sampler"),
    ({"federated__setting": "continual", "continual__storage_cap": 0}, "continual.storage_cap"),
    (
      {"federated__setting": "continual", "continual__deletion_policy": "lifo"},
      "continual.deletion_policy",
    ),
    ({"selection__num_clients_per_round": 0}, "num_clients_per_round"),
  ],
)
def test_bad_config_raises_before_compute(tmp_path, fields, match):
  config = _mutate(fed_nlu.get_config("smoke"), **fields)
  with pytest.raises(ConfigError, match=match):
    experiment.run(config, tmp_path)
  assert not (tmp_path / "config.json").exists()  # nothing written, nothing computed


def test_more_clients_per_round_than_population(tmp_path):
  config = fed_nlu.get_config("smoke,partition=iid,clients=5")
  config.selection.num_clients_per_round = 6
  with pytest.raises(ConfigError, match="num_clients_per_round=6"):
    experiment.run(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_static_smoke_contract_and_exact_resume(tmp_path):
  config = fed_nlu.get_config("smoke,algorithm=fedadam")
  full = experiment.run(config, tmp_path / "full")
  for name in ("config.json", "metrics.jsonl", "summary.json", "plots/eval_curve.png"):
    assert (tmp_path / "full" / name).exists(), name
  assert (tmp_path / "full" / "checkpoints").is_dir()
  assert full["fed/rounds"] == 3 and full["fed/clients_per_round"] == 4
  assert 0.0 <= full["eval/accuracy"] <= 1.0
  events = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert {e["split"] for e in events} >= {"train", "eval"}
  # Round 2 is also a periodic checkpoint (checkpoint_every=2): the stop must not save twice.
  stopped = experiment.run(config, tmp_path / "resumed", stop_after_round=2)
  assert stopped == {"fed/interrupted_at": 2}
  resumed = experiment.run(config, tmp_path / "resumed")
  assert resumed["eval/loss"] == full["eval/loss"]  # bit-identical after resume
  assert resumed["fed/eval_curve"][-1] == full["fed/eval_curve"][-1]


def test_continual_activity_smoke(tmp_path):
  config = fed_selection.get_config("smoke,sampler=activity,setting=continual,policy=reservoir")
  s = experiment.run(config, tmp_path)
  assert s["fed/setting"] == "continual" and s["fed/weighting"] == "uniform"
  for key in (
    "continual/forward_accuracy",
    "continual/forgetting_accuracy",
    "continual/final_mean_accuracy",
  ):
    assert np.isfinite(s[key]), key


def test_dp_smoke_reports_epsilon_from_the_ledger_and_releases_nothing_private(tmp_path):
  config = fed_nlu.get_config("smoke,dp,partition=iid,clients=12")
  s = experiment.run(config, tmp_path / "a")
  assert s["privacy/unit"] == "user" and 0 < s["privacy/epsilon"] < float("inf")
  # ε re-derived with dp_accounting from the ledger's per-round records.
  acc = accounting.make_accountant("rdp", "poisson")
  for rec, n in s["privacy/ledger"]:
    acc.compose(accounting.step_event("poisson", rec["sampling_rate"], rec["noise_multiplier"]), n)
  assert s["privacy/epsilon"] == acc.get_epsilon(1e-5)
  # Poisson cohorts are capped with their truncation probability in the total δ (audit A8).
  assert s["privacy/total_delta"] >= s["privacy/delta"]
  assert s["privacy/total_delta"] < 1.01 * s["privacy/delta"]
  # No realised cohort size, exact unclipped fraction or client loss is written (audit A4).
  # (Eval metrics are on held-out users' test rows.)
  text = json.dumps({k: v for k, v in s.items() if not k.startswith("eval/")})
  text += json.dumps([e for e in writers.read_metrics(tmp_path / "a") if "eval" not in e["split"]])
  private = ("clients_sampled", '"fed/clients_per_round"', 'dp/unclipped_fraction"', 'loss": ')
  for key in private + ("train/loss", "truncated_rounds"):
    assert key not in text, key
  # Fresh secret per run: same config.json, different noise.
  t = experiment.run(config, tmp_path / "b")
  assert t["privacy/epsilon"] == s["privacy/epsilon"] and t["eval/loss"] != s["eval/loss"]
  # A changed config on the same workdir is refused, naming the field.
  config.dp.noise_multiplier = 2.0
  with pytest.raises(ConfigError, match="dp.noise_multiplier"):
    experiment.run(config, tmp_path / "a")


@pytest.mark.slow
def test_shakespeare_lm_smoke(tmp_path, shared_data_dir):
  del shared_data_dir
  s = experiment.run(fed_lm_shakespeare.get_config("smoke"), tmp_path)
  assert s["model/name"] == "causal_lm" and 1.0 < s["eval/perplexity"] < 200.0
  assert s["fed/population"] >= 10


def test_launch_bad_config_exits_with_one_line(tmp_path, repo_root):
  env = dict(os.environ, PYTHONPATH=str(repo_root))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.federated",
      "--config=configs/fed_nlu.py:smoke,partition=dirichlet,alpha=0",
      f"--workdir={tmp_path}",
    ],
    cwd=repo_root,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "partition.alpha" in errors[0]
  assert not pathlib.Path(tmp_path, "summary.json").exists()


def test_sweeps_expand():
  assert len(fed_nlu.get_sweep("seeds=1")) == 10
  runs = fed_selection.get_sweep("data=synthetic,seeds=3")
  assert len(runs) == 12 and len({r["name"] for r in runs}) == 12
  for r in runs[:2]:
    fed_selection.get_config(r["arg"])  # every sweep arg parses


def test_selection_study_sweep_covers_every_sampler_weighting_pair():
  runs = fed_selection.get_sweep("selection_study")
  assert len(runs) == 40 and len({r["name"] for r in runs}) == 40
  cells = set()
  for r in runs:
    c = fed_selection.get_config(r["arg"])
    cells.add((c.federated.setting, c.selection.sampler, c.selection.weighting))
    assert c.data.min_speeches == 1 and c.model.embed_dim == 16 and c.federated.rounds == 600
  assert len(cells) == 8  # 2 settings x 2 samplers x 2 weightings
  # The paired default still follows the sampler; an explicit weighting wins.
  assert fed_selection.get_config("sampler=activity").selection.weighting == "uniform"
  assert fed_selection.get_config("selection_study,rounds=4").federated.rounds == 4


def test_unknown_weighting_is_one_config_error(tmp_path):
  config = fed_selection.get_config("smoke,weighting=by_size")
  with pytest.raises(ConfigError, match="selection.weighting='?by_size'? is invalid"):
    experiment.run(config, tmp_path)
  assert not pathlib.Path(tmp_path, "summary.json").exists()


def test_continual_summary_signs():
  acc = np.array([[0.5, 0.2, 0.1], [0.7, 0.6, 0.3], [0.6, 0.65, 0.7]])
  s = experiment._continual_summary(acc, "accuracy")  # pylint: disable=protected-access
  assert s["continual/forward_accuracy"] == pytest.approx((0.2 + 0.3) / 2)
  assert s["continual/forgetting_accuracy"] == pytest.approx(((0.7 - 0.6) + (0.6 - 0.65)) / 2)
  ppl = np.array([[10.0, 30.0, 40.0], [8.0, 12.0, 35.0], [9.0, 11.0, 13.0]])
  s = experiment._continual_summary(ppl, "perplexity")  # pylint: disable=protected-access
  assert s["continual/forgetting_perplexity"] == pytest.approx(((9.0 - 8.0) + (11.0 - 12.0)) / 2)
