"""launch/train.py and launch/sweep.py end to end (subprocesses, as a user runs them)."""

import json
import subprocess
import sys

import pytest


def _run(args, cwd):
  return subprocess.run(
    [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600
  )


@pytest.mark.parametrize("model", ["bag", "cnn", "transformer"])
def test_nlu_smoke_config_through_launch(tmp_path, repo_root, model):
  wd = tmp_path / model
  p = _run(
    ["launch.train", f"--config=configs/nlu.py:smoke,model={model}", f"--workdir={wd}"], repo_root
  )
  assert p.returncode == 0, p.stderr[-2000:]
  summary = json.loads((wd / "summary.json").read_text())
  assert summary["model/name"] == model and "eval/accuracy" in summary


@pytest.mark.parametrize(
  "arg,override,match",
  [
    ("smoke,model=lstm", None, "model.name"),
    ("smoke,dataset=x", None, "dataset"),
    ("smoke", "--config.train.batch_size=0", "train.batch_size"),
    ("smoke,data=snips", "--config.data.dir=/nonexistent", "data.dir"),
  ],
)
def test_bad_config_exits_nonzero_with_one_line(tmp_path, repo_root, arg, override, match):
  args = ["launch.train", f"--config=configs/nlu.py:{arg}", f"--workdir={tmp_path / 'w'}"]
  if override:
    args.append(override)
  p = _run(args, repo_root)
  assert p.returncode != 0
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and match in last, p.stderr[-2000:]
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_sweep_collects_a_table(tmp_path, repo_root):
  p = _run(
    [
      "launch.sweep",
      "--config=configs/nlu.py:smoke",
      "--sweep_arg=seeds=1",
      f"--workdir={tmp_path}",
      "--workers=2",
    ],
    repo_root,
  )
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
  lines = (tmp_path / "results.md").read_text().splitlines()
  assert len(lines) == 2 + 3  # Header, rule, one row per model.
  assert "eval/accuracy" in lines[0]
  assert (tmp_path / "results.csv").exists()
  # Each run is reported as it starts and ends, with where its log is.
  assert f"each run's output is in {tmp_path}/<name>/log.txt" in p.stderr
  for name in ("bag_seed0", "cnn_seed0", "transformer_seed0"):
    assert f"{name}: started (log: {tmp_path / name / 'log.txt'})" in p.stderr
    assert f"{name}: finished in" in p.stderr
  assert p.stdout.strip().splitlines()[-1].startswith("done: 3 of 3 runs ok")
  again = _run(
    [
      "launch.sweep",
      "--config=configs/nlu.py:smoke",
      "--sweep_arg=seeds=1",
      f"--workdir={tmp_path}",
    ],
    repo_root,
  )
  assert again.returncode == 0 and "(3 finished earlier)" in again.stderr
