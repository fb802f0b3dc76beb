"""bench/ghost_coverage.py: the models a researcher brings have ghost rules for every leaf (scan
bodies and raw table lookups included); the rules' exactness is tested in float64 in
tests/privacy/test_ghost.py."""

import argparse
import sys

import pytest


@pytest.fixture(scope="module")
def cov(repo_root):
  sys.path.insert(0, str(repo_root / "bench"))
  import ghost_coverage  # noqa: PLC0415

  return ghost_coverage


TINY = argparse.Namespace(batch=4, seq=8, width=16, layers=1, vocab=50, reps=1)


def test_every_model_is_benchmarked(cov):
  assert set(cov.MODELS) == set(MODELS)


MODELS = ["linen_mha", "nnx_mha", "raw_mlp", "depthwise", "scan", "scan_remat", "raw_embed", "rnn"]


@pytest.mark.parametrize("name", MODELS)
def test_user_models_have_a_rule_for_every_leaf(cov, name):
  row = cov.measure(name, TINY)
  assert row["residual_leaves"] == []
  assert row["plain_s"] > 0 and row["edp_s"] > 0
