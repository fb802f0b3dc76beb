"""bench/ghost_coverage.py: the models a researcher brings have ghost rules (all but the scanned
blocks); the rules' exactness is tested in float64 in tests/privacy/test_ghost.py."""

import argparse
import sys

import pytest


@pytest.fixture(scope="module")
def cov(repo_root):
  sys.path.insert(0, str(repo_root / "bench"))
  import ghost_coverage  # noqa: PLC0415

  return ghost_coverage


TINY = argparse.Namespace(batch=4, seq=8, width=16, layers=1, vocab=50, reps=1)


@pytest.mark.parametrize("name", ["linen_mha", "nnx_mha", "raw_mlp", "depthwise", "scan"])
def test_user_models_are_covered_except_scan_bodies(cov, name):
  row = cov.measure(name, TINY)
  if name == "scan":
    assert row["residual_leaves"] and all("ScanBlock" in n for n in row["residual_leaves"])
  else:
    assert row["residual_leaves"] == []
  assert row["plain_s"] > 0 and row["edp_s"] > 0
