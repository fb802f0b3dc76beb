"""One validator naming convention for every config section (trustml.core.validation)."""

import ast
import importlib
import pathlib

import trustml

ROOT = pathlib.Path(trustml.__file__).parent

# (module, validator) pairs the convention documents in trustml/core/validation.py.
SECTION_VALIDATORS = [
  ("trustml.train.config", "validate_train"),
  ("trustml.train.config", "validate_text"),
  ("trustml.train.config", "validate_mesh"),
  ("trustml.models.registry", "validate_model"),
  ("trustml.data.sources", "validate_data"),
  ("trustml.privacy.config", "validate_privacy"),
  ("trustml.data.canaries", "validate_canaries"),
  ("trustml.attacks.experiment", "validate_attack"),
  ("trustml.federated.algorithms", "validate_algorithm"),
]
CONFIG_VALIDATORS = ["trustml.attacks.experiment", "trustml.fairness.experiment"]
CONFIG_VALIDATORS += ["trustml.federated.population"]


def _public_validators():
  for path in sorted(ROOT.rglob("*.py")):
    for node in ast.parse(path.read_text()).body:
      if isinstance(node, ast.FunctionDef) and node.name.startswith("validate"):
        yield path.relative_to(ROOT.parent).as_posix(), node.name


def test_documented_validators_exist_and_are_public():
  for module, name in SECTION_VALIDATORS:
    mod = importlib.import_module(module)
    assert callable(getattr(mod, name)) and name in mod.__all__, (module, name)
    assert name.replace("validate_", "") in mod.__doc__ + getattr(mod, name).__doc__
  for module in CONFIG_VALIDATORS:
    assert "validate_config" in importlib.import_module(module).__all__, module


def test_no_module_level_validator_breaks_the_convention():
  found = list(_public_validators())
  assert ("trustml/train/config.py", "validate_train") in found  # The scan sees the tree.
  # A bare ``validate`` says nothing of what it checks; ``validate_<x>_config`` is the old
  # spelling of ``validate_<x>`` (only a pillar's whole config is ``validate_config``).
  bad = [
    (f, n)
    for f, n in found
    if n == "validate" or (n.endswith("_config") and n != "validate_config")
  ]
  assert not bad, bad
