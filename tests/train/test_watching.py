"""Watching a run: TensorBoard events with ε, plots/, a quiet log (sweep lines: test_launch)."""

import json
import subprocess
import sys

import numpy as np

from trustml.core import plots
from trustml.train import writers


def _run(args, cwd):
  return subprocess.run(
    [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600
  )


def test_dp_run_writes_epsilon_to_tensorboard_plots_and_a_quiet_log(tmp_path, repo_root):
  wd = tmp_path / "dp"
  p = _run(["launch.train", "--config=configs/dp_nlu.py:smoke", f"--workdir={wd}"], repo_root)
  assert p.returncode == 0, p.stderr[-3000:]
  # No third-party noise: dp_accounting's non-convergence warnings, orbax INFO lines.
  assert "failed to converge" not in p.stderr and "Excluding this order" not in p.stderr
  assert "orbax" not in p.stderr and "checkpoint_manager" not in p.stderr
  summary = json.loads((wd / "summary.json").read_text())
  last = p.stdout.strip().splitlines()[-1]
  assert last.startswith("done: ") and f"ε = {summary['privacy/epsilon']:.2f}" in last
  scalars = writers.read_tensorboard(wd)
  eps_tags = [t for t in scalars if t.endswith("epsilon")]
  assert eps_tags, sorted(scalars)
  steps, eps = zip(*scalars[eps_tags[0]], strict=True)
  assert list(steps) == sorted(steps) and np.all(np.diff(eps) >= 0)  # ε composes: never drops.
  np.testing.assert_allclose(eps[-1], summary["privacy/epsilon"], rtol=1e-6)  # float32 events.
  assert "eval/accuracy" in scalars
  names = sorted(path.name for path in (wd / "plots").iterdir())
  assert names == ["accuracy.png", "epsilon.png", "loss.png"]


def test_plot_run_draws_what_the_events_hold(tmp_path):
  assert plots.plot_run(tmp_path) == []  # No events, no plots.
  w = writers.MetricWriter(tmp_path, tensorboard=False)
  for step in (2, 4, 6):
    w.write(step, "train", loss=1.0 / step)
    w.write(step, "eval", loss=2.0 / step, perplexity=10.0 / step)
  w.close()
  out = plots.plot_run(tmp_path)
  assert sorted(p.split("/")[-1] for p in out) == ["loss.png", "perplexity.png"]
  steps, values = plots.curve(plots.read_events(tmp_path), "eval", ("perplexity",))
  assert steps == [2, 4, 6] and values == [5.0, 2.5, 10.0 / 6]
