"""trustml/configs: shipped in the package, one parser, composed base -> variant, root aliases."""

import ast
import pathlib
import subprocess
import sys

import pytest

import trustml.configs
from trustml.core import config_args
from trustml.core.validation import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trustml" / "configs"


def test_configs_import_from_the_installed_package(tmp_path):
  p = subprocess.run(
    [
      sys.executable,
      "-c",
      "from trustml.configs import dp_nlu; print(dp_nlu.get_config('smoke').privacy.mechanism)",
    ],
    cwd=tmp_path,  # Not the checkout: no root configs/ on the path.
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0 and p.stdout.strip() == "edp_sgd", p.stderr[-2000:]


@pytest.mark.parametrize("name", trustml.configs.NAMES)
def test_each_config_has_a_root_alias_with_the_same_output(name):
  alias = ROOT / "configs" / f"{name}.py"
  assert alias.exists(), f"configs/{name}.py keeps --config=configs/{name}.py working"
  import importlib

  shipped = importlib.import_module(f"trustml.configs.{name}")
  aliased = importlib.import_module(f"configs.{name}")
  assert aliased.get_config is shipped.get_config
  assert shipped.get_config("smoke").to_dict() == aliased.get_config("smoke").to_dict()


def _calls(tree: ast.AST) -> list[str]:
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      if isinstance(node.func.value, ast.Name):
        out.append(f"{node.func.value.id}.{node.func.attr}")
  return out


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("[a-z]*.py")), ids=lambda p: p.stem)
def test_configs_compose_one_way(path):
  tree = ast.parse(path.read_text())
  calls = _calls(tree)
  siblings = set(trustml.configs.NAMES)
  # No config re-invokes another config's get_config through a re-serialised arg string.
  assert not [c for c in calls if c.split(".")[0] in siblings and c.endswith(".get_config")]
  # The argument is parsed once, by the shared parser (crr_distill has its own spine).
  if path.stem not in ("crr_distill",):
    assert "config_args.parse_common" in calls or "attack.build" in calls, path.stem
  assert "from configs" not in path.read_text()


def test_smoke_is_explicit_and_never_overrides_explicit_args():
  from trustml.configs import bias_auc_hatexplain, fed_lm_shakespeare, fed_nlu, fed_selection

  assert fed_nlu.get_config("smoke,clients=1000,partition=iid").partition.num_clients == 1000
  assert fed_nlu.get_config("rounds=3").partition.num_clients == 100  # rounds=3 is not smoke.
  assert fed_selection.get_config("rounds=3").continual.num_periods == 4
  assert fed_selection.get_config("smoke,periods=2").continual.num_periods == 2
  assert fed_lm_shakespeare.get_config("smoke,max_len=64").text.max_len == 64
  assert bias_auc_hatexplain.get_config("smoke,epochs=1").train.num_epochs == 1.0
  a = config_args.parse_common("smoke,data=snips")
  assert a.given == ("data", "smoke") and a.model == "bag"


def test_an_explicit_arg_the_partition_would_ignore_is_an_error():
  from trustml.configs import fed_nlu

  # The embedded corpus is partitioned by its users: clients= and alpha= would do nothing.
  with pytest.raises(ConfigError, match=r"^config arg clients=1000 is invalid with partition="):
    fed_nlu.get_config("smoke,clients=1000")
  with pytest.raises(ConfigError, match=r"^config arg alpha=0.1 is invalid with partition=iid"):
    fed_nlu.get_config("partition=iid,alpha=0.1")
  assert fed_nlu.get_config("data=snips,alpha=0.1").partition.alpha == 0.1  # Dirichlet.
  assert fed_nlu.get_config("partition=quantity,clients=7").partition.num_clients == 7
