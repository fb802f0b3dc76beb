"""Every launch script's bad-input path: exactly one ``error:`` line, non-zero exit, no compute.

Each case runs the launcher as a user does (``python -m launch.<x> ...``) and checks that
stderr holds one ``error:`` line (the last one) naming the problem, no traceback, and that the
run wrote no checkpoint.
"""

import os
import pathlib
import subprocess
import sys

import pytest

_RO = "/proc/1/trustml_run"  # procfs: exists, and no one (root included) may create in it.

_NO_STEPS = ["--config.train.num_epochs=0", "--config.train.num_steps=0"]

# (id, launcher args with {tmp}, {file}, {empty} placeholders, expected text in the error line)
CASES = [
  (
    "train-typo-field",
    ["launch.train", "--config=configs/nlu.py:smoke", "--config.train.batchsize=3"],
    "did you mean config.train.batch_size",
  ),
  (
    "federated-typo-field",
    ["launch.federated", "--config=configs/fed_nlu.py:smoke", "--config.federated.round=3"],
    "did you mean config.federated.rounds",
  ),
  (
    "fairness-typo-field",
    ["launch.fairness", "--config=configs/aps.py:smoke", "--config.fairness.tsk=x"],
    "did you mean config.fairness.task",
  ),
  (
    "attack-typo-section",
    ["launch.attack", "--config=configs/attack.py:smoke", "--config.attak.x=1"],
    "did you mean config.attack",
  ),
  (
    "federated-typo-arg",
    ["launch.federated", "--config=configs/fed_nlu.py:smoke,clientz=3"],
    "'clientz' is not a known field",
  ),
  (
    "sweep-typo-sweep-arg",
    ["launch.sweep", "--config=configs/nlu.py", "--sweep_arg=seedz=1"],
    "seedz",
  ),
  ("train-workdir-file", ["launch.train", "--config=configs/nlu.py:smoke", "@file"], "is a file"),
  (
    "federated-workdir-file",
    ["launch.federated", "--config=configs/fed_nlu.py:smoke", "@file"],
    "is a file",
  ),
  (
    "fairness-workdir-file",
    ["launch.fairness", "--config=configs/aps.py:smoke", "@file"],
    "is a file",
  ),
  (
    "attack-workdir-file",
    ["launch.attack", "--config=configs/attack.py:smoke", "@file"],
    "is a file",
  ),
  ("sweep-workdir-file", ["launch.sweep", "--config=configs/nlu.py:smoke", "@file"], "is a file"),
  (
    "train-workdir-readonly",
    ["launch.train", "--config=configs/nlu.py:smoke", "@ro"],
    "not writable",
  ),
  ("attack-missing-workdir", ["launch.attack", "@missing"], "does not exist"),
  ("attack-workdir-without-run", ["launch.attack", "@empty"], "no config.json"),
  ("attack-summarize-empty", ["launch.attack", "--summarize={empty}"], "summary.json"),
  ("train-no-config", ["launch.train"], "config=None is invalid"),
  ("federated-no-config", ["launch.federated"], "config=None is invalid"),
  (
    "train-zero-epochs",
    ["launch.train", "--config=configs/nlu.py", "--config.train.num_epochs=0"],
    "train.num_epochs=0",
  ),
  (
    "train-batch-larger-than-data",
    ["launch.train", "--config=configs/nlu.py:smoke", "--config.train.batch_size=100000"],
    "train.batch_size=100000 is invalid",
  ),
  (
    "sweep-typo-field",
    ["launch.sweep", "--config=configs/nlu.py:smoke", "--config.train.batchsize=3"],
    "--config.train.batchsize is invalid: this launcher takes no --config.<field> overrides",
  ),
  (
    "federated-workdir-readonly",
    ["launch.federated", "--config=configs/fed_nlu.py:smoke", "@ro"],
    "not writable",
  ),
  (
    "fairness-workdir-readonly",
    ["launch.fairness", "--config=configs/aps.py:smoke", "@ro"],
    "not writable",
  ),
  (
    "attack-workdir-readonly",
    ["launch.attack", "--config=configs/attack.py:smoke", "@ro"],
    "not writable",
  ),
  (
    "sweep-workdir-readonly",
    ["launch.sweep", "--config=configs/nlu.py:smoke", "@ro"],
    "not writable",
  ),
  ("attack-workdir-of-a-train-run", ["launch.attack", "@trainrun"], "not trained for an attack"),
  (
    "train-negative-steps",
    ["launch.train", "--config=configs/nlu.py:smoke", "--config.train.num_steps=-5"],
    "train.num_steps=-5 is invalid",
  ),
  (
    "federated-zero-rounds",
    ["launch.federated", "--config=configs/fed_nlu.py:smoke", "--config.federated.rounds=0"],
    "federated.rounds=0 is invalid",
  ),
  (
    "attack-zero-epochs",
    ["launch.attack", "--config=configs/attack.py:smoke", *_NO_STEPS],
    "train.num_epochs=0.0 is invalid",
  ),
  (
    "fairness-zero-epochs",
    ["launch.fairness", "--config=configs/aps.py:smoke", *_NO_STEPS],
    "train.num_epochs=0.0 is invalid",
  ),
  (
    "attack-batch-larger-than-data",
    ["launch.attack", "--config=configs/attack.py:smoke", "--config.train.batch_size=100000"],
    "train.batch_size=100000 is invalid",
  ),
  (
    "fairness-batch-larger-than-data",
    ["launch.fairness", "--config=configs/aps.py:smoke", "--config.train.batch_size=100000"],
    "train.batch_size=100000 is invalid",
  ),
  (  # :smoke keeps the explicit clients=1000, which a natural (per-user) partition would ignore.
    "federated-smoke-keeps-explicit-clients",
    ["launch.federated", "--config=configs/fed_nlu.py:smoke,clients=1000"],
    "clients=1000 is invalid with partition=natural",
  ),
  (
    "federated-not-a-federated-config",
    ["launch.federated", "--config=configs/nlu.py:smoke"],
    "lacks the section(s) partition, selection",
  ),
  (  # The embedded corpus has no digits: a control's never-inserted secrets are unknown words.
    "attack-control-on-data-without-the-secret-words",
    ["launch.attack", "--config=configs/privacy_study.py:repeats=0,smoke"],
    "a control run (canaries.repeats=0) never inserts its secrets",
  ),
  (
    "attack-not-an-attack-config",
    ["launch.attack", "--config=configs/nlu.py:smoke"],
    "lacks the section(s) canaries, attack",
  ),
]

_WORKDIRS = {
  "@file": "{file}",
  "@ro": _RO,
  "@missing": "{tmp}/missing",
  "@empty": "{empty}",
  "@trainrun": "{tmp}/trainrun",  # A finished launch.train run: config.json without canaries.
}


def _expand(args: list[str], tmp: pathlib.Path) -> list[str]:
  names = {"tmp": str(tmp), "file": str(tmp / "a_file"), "empty": str(tmp / "empty")}
  out, has_workdir = [], False
  for a in args:
    if a in _WORKDIRS:
      a, has_workdir = "--workdir=" + _WORKDIRS[a], True
    out.append(a.format(**names))
    has_workdir = has_workdir or a.startswith("--summarize")
  if not has_workdir:
    out.append(f"--workdir={tmp / 'run'}")
  return out


@pytest.mark.parametrize("args,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_prints_one_error_line(tmp_path, repo_root, args, expected):
  if "@ro" in args and (not os.path.isdir("/proc/1") or os.access("/proc/1", os.W_OK)):
    pytest.skip("no read-only directory to point --workdir at on this machine")
  (tmp_path / "a_file").write_text("not a directory\n")
  (tmp_path / "empty").mkdir()
  (tmp_path / "trainrun").mkdir()
  (tmp_path / "trainrun" / "config.json").write_text('{"seed": 0, "model": {"name": "bag"}}')
  cmd = [sys.executable, "-m", *_expand(args, tmp_path)]
  p = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
  lines = [line for line in p.stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  assert p.returncode != 0, p.stdout[-2000:] + p.stderr[-2000:]
  assert len(errors) == 1 and lines[-1] == errors[0], p.stderr[-3000:]
  assert expected in errors[0], errors[0]
  assert "Traceback" not in p.stderr
  assert not list(tmp_path.rglob("checkpoints")), "bad input must stop before any compute"
