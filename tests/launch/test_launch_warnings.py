"""Launch scripts on valid but unusual input: a δ > 1/N warning, and ``:smoke`` keeping args.

Each runs the launcher as a user does (``python -m launch.<x> ...``) at smoke size: it must
finish (exit 0) with no ``error:`` line, warn once where a warning is due, and run what the
command line said rather than what the smoke variant would have chosen.
"""

import json
import subprocess
import sys

import pytest


def _launch(repo_root, *args):
  p = subprocess.run(
    [sys.executable, "-m", *args], cwd=repo_root, capture_output=True, text=True, timeout=600
  )
  assert p.returncode == 0, p.stderr[-3000:]
  assert not [line for line in p.stderr.splitlines() if line.startswith("error:")], p.stderr
  assert "Traceback" not in p.stderr
  return p


@pytest.mark.slow
def test_dp_delta_above_one_over_n_warns_once_and_runs(tmp_path, repo_root):
  run = tmp_path / "dp"
  p = _launch(
    repo_root,
    "launch.train",
    "--config=configs/dp_nlu.py:smoke,eps=2",
    "--config.privacy.delta=0.1",
    f"--workdir={run}",
  )
  warnings = [line for line in p.stderr.splitlines() if "larger than 1/N" in line]
  assert len(warnings) == 1, p.stderr[-3000:]
  n = json.loads((run / "summary.json").read_text())["data/num_train"]
  assert f"privacy.delta=0.1 is larger than 1/N = 1/{n} (training examples)" in warnings[0]
  summary = json.loads((run / "summary.json").read_text())
  assert summary["privacy/delta"] >= 0.1 and 0 < summary["privacy/epsilon"] <= 2.0 + 1e-9


@pytest.mark.slow
def test_smoke_keeps_the_args_given_explicitly(tmp_path, repo_root):
  run = tmp_path / "fed"
  _launch(
    repo_root,
    "launch.federated",
    "--config=configs/fed_nlu.py:smoke,partition=iid,clients=30,per_round=5,rounds=2",
    f"--workdir={run}",
  )
  config = json.loads((run / "config.json").read_text())
  summary = json.loads((run / "summary.json").read_text())
  # Smoke alone gives 12 clients, 4 per round, 3 rounds.
  assert config["partition"]["num_clients"] == 30 and summary["partition/num_clients"] == 30
  assert config["selection"]["num_clients_per_round"] == 5
  assert summary["fed/clients_per_round"] == 5
  assert config["federated"]["rounds"] == 2 and summary["fed/rounds"] == 2
