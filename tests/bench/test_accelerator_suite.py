"""bench/accelerator_suite.sh runs end to end at --tiny sizes on CPU (so it works before it first
meets a GPU), and its full sizes are what its docstring promises."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from trustml.train import loop


def _suite_module(repo_root):
  sys.path.insert(0, str(repo_root / "bench"))
  import accelerator_suite  # noqa: PLC0415

  return accelerator_suite


def test_full_big_transformer_has_over_100m_parameters(repo_root):
  suite = _suite_module(repo_root)
  model = suite.big_model(suite.FULL)
  t = suite.FULL["big_seq"]
  batch = {
    "tokens": jnp.zeros((2, t), jnp.int32),
    "mask": jnp.ones((2, t), bool),
    "label": jnp.zeros((2,), jnp.int32),
    "weight": jnp.ones((2,), jnp.float32),
  }
  shapes = jax.eval_shape(model.init, jax.random.key(0), batch)  # No compute, no memory.
  assert loop.num_params(shapes) >= 100_000_000
  assert suite.FULL["fl_clients"] == (1024, 10_000)
  assert suite.FULL["shadow"]["models"] == 16


@pytest.mark.slow
def test_tiny_suite_writes_one_json_of_results(tmp_path, repo_root):
  out = tmp_path / "suite.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    ["bash", str(repo_root / "bench" / "accelerator_suite.sh"), "--tiny", f"--out={out}"],
    cwd=repo_root,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["tiny"] and r["ok"], json.dumps(r, indent=1)[:3000]
  variants = {(row["model"], row["variant"]) for row in r["dp_step"]["rows"]}
  assert {("bag", "plain"), ("bag", "edp")} <= variants
  big = r["big_transformer"]
  assert big["plain"]["num_params"] == big["edp"]["num_params"] > 0
  assert big["time_ratio"] > 0 and big["memory_ratio"] > 0
  assert r["shadow"]["vmapped_s"] > 0 and r["shadow"]["one_s"] > 0
  assert set(k for k in r["fl_round"] if k != "ok") == {"8", "16"}
  assert "wrote" in proc.stdout
