"""``import trustml``: lazy subpackages, one call per pillar, progress visible outside app.run."""

import subprocess
import sys

import pytest

import trustml


def _python(code: str, cwd) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600
  )


def test_import_is_lazy_and_exposes_every_subpackage(tmp_path):
  p = _python(
    "import sys, trustml\n"
    "assert 'jax' not in sys.modules and 'trustml.privacy' not in sys.modules\n"
    "assert trustml.privacy.accounting.__name__ == 'trustml.privacy.accounting'\n"
    "assert set(trustml.SUBPACKAGES) <= set(dir(trustml))\n"
    "print('OK')",
    tmp_path,  # Not the checkout: the installed package alone.
  )
  assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-2000:]
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    trustml.nope  # noqa: B018


@pytest.mark.parametrize("pillar", ["train", "federated", "attacks", "fairness"])
def test_one_call_per_pillar(pillar):
  run = getattr(trustml, pillar).run
  assert callable(run) and run.__module__ == f"trustml.{pillar}"
  assert "Returns:" in run.__doc__ and "workdir" in run.__doc__
  assert "run" in getattr(trustml, pillar).__all__


def test_run_in_a_plain_script_shows_progress_and_returns_the_summary(tmp_path, repo_root):
  p = _python(
    "import trustml\n"
    f"s = trustml.train.run('configs/nlu.py:smoke', r'{tmp_path / 'run'}')\n"
    "print('ACC', s['eval/accuracy'])",
    repo_root,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  assert "step 6/6" in p.stderr and "ETA" in p.stderr  # absl INFO visible without app.run.
  assert "done: accuracy" in p.stderr and "ACC " in p.stdout
  assert (tmp_path / "run" / "plots" / "loss.png").exists()


def test_load_config_by_name_path_or_configdict(repo_root):
  from trustml.core import entry
  from trustml.core.validation import ConfigError

  by_path = entry.load_config(str(repo_root / "configs" / "nlu.py") + ":smoke")
  assert by_path.train.num_steps == 6
  assert entry.load_config(by_path) is by_path
  with pytest.raises(ConfigError, match="no config named 'nope'"):
    entry.load_config("nope:smoke")
