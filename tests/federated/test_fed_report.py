"""Sweep tables: t-intervals (closed form with the tabulated t quantile) and seed-paired differences."""

import json

import numpy as np
import pytest

from trustml.federated import report

T_975_DF4 = 2.7764451051977987  # Student t, 97.5% quantile, 4 degrees of freedom (tables)


def test_t_interval_closed_form():
  v = np.array([10.0, 11.0, 9.5, 12.0, 10.5])
  mean, low, high = report.t_interval(v)
  half = T_975_DF4 * v.std(ddof=1) / np.sqrt(len(v))
  assert mean == pytest.approx(v.mean())
  assert (low, high) == pytest.approx((v.mean() - half, v.mean() + half), rel=1e-12)
  with pytest.raises(ValueError, match=">= 2 values"):
    report.t_interval([1.0])


def _write(tmp_path, name, seed, sampler, ppl):
  d = tmp_path / name
  d.mkdir()
  (d / "summary.json").write_text(json.dumps({"fed/sampler": sampler, "eval/perplexity": ppl}))
  (d / "config.json").write_text(json.dumps({"seed": seed}))


def test_paired_differences_pair_by_seed(tmp_path):
  base = [10.0, 12.0, 11.0, 13.0, 9.0]
  shift = [-0.5, -0.4, -0.6, -0.5, -0.5]
  for s in range(5):  # written in an order where names do not line up with seeds
    _write(tmp_path, f"a{4 - s}", s, "uniform", base[s])
    _write(tmp_path, f"b{s}", s, "activity", base[s] + shift[s])
  runs = report.load_runs(tmp_path)
  out = report.paired_differences(runs, (), "fed/sampler", "uniform")
  mean, low, high, n = out[("activity",)]
  assert n == 5 and mean == pytest.approx(-0.5)
  half = T_975_DF4 * np.std(shift, ddof=1) / np.sqrt(5)
  assert (low, high) == pytest.approx((-0.5 - half, -0.5 + half))
  # Unpaired, the seed-to-seed spread (sd ~1.6) would swamp the -0.5 shift.
  md = report.interval_table(runs, ("fed/sampler",))
  assert "| activity | 5 | 10.500 [" in md and "| uniform | 5 | 11.000 [" in md
  _write(tmp_path, "c0", 0, "other", 7.25)  # one seed: a mean, no interval
  assert "| other | 1 | 7.250 |" in report.interval_table(
    report.load_runs(tmp_path), ("fed/sampler",)
  )
