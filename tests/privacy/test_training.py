"""DP training through the spine loop: resume, secret noise, release policy, refusals, CLI."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import dp_nlu
from trustml import privacy
from trustml.core.validation import ConfigError
from trustml.privacy import accounting, training
from trustml.train import loop, writers

# What the release policy (docs/privacy.md) calls private: exact statistics of the training data.
PRIVATE_KEYS = ("num_examples", "num_clipped", "num_nonfinite", "num_truncated", "clients_sampled")


def _config(**privacy):
  config = dp_nlu.get_config("smoke")
  for k, v in privacy.items():
    config.privacy[k] = v
  return config


def _params(outcome):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(outcome.state.params)])


def test_public_names():
  assert {
    "ClippedAggregator",
    "DpSgd",
    "PrivacyLedger",
    "StepRecord",
    "dp_sgd",
    "gaussian_privatizer",
    "aggregators",
    "dp_aggregate",
    "make_grad_fn",
  } <= set(privacy.__all__)
  assert training.__all__ == ["build", "run"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  """One default DP smoke run shared by the tests that only read it."""
  path = tmp_path_factory.mktemp("default_run")
  return path, training.run(_config(), path)


def test_noise_is_secret_fresh_per_run_and_reproducible_only_with_noise_seed(tmp_path, default_run):
  # Same public config (same seed in config.json): fresh entropy draws different noise...
  path_a, a = default_run
  (tmp_path / "a").symlink_to(path_a)
  b = training.run(_config(), tmp_path / "b")
  assert json.loads((tmp_path / "a/config.json").read_text()) == json.loads(
    (tmp_path / "b/config.json").read_text()
  )
  pa = loop.load_params(_config(), tmp_path / "a")[0]
  pb = loop.load_params(_config(), tmp_path / "b")[0]
  assert not np.allclose(np.asarray(pa["head"]["kernel"]), np.asarray(pb["head"]["kernel"]))
  assert a["privacy/noise_seed_fixed"] is False and "privacy/guarantee_note" not in a
  assert a["privacy/epsilon"] == b["privacy/epsilon"]  # Same accounting, different draws.
  # ... a fixed noise seed reproduces bit for bit, across an interruption, and says so.
  full = training.run(_config(noise_seed=11), tmp_path / "c")
  config = _config(noise_seed=11)
  part = training.run(config, tmp_path / "d", stop_after_step=2)
  assert part == {"train/interrupted_at": 2}
  resumed = training.run(config, tmp_path / "d")
  pc = loop.load_params(config, tmp_path / "c")[0]
  pd = loop.load_params(config, tmp_path / "d")[0]
  for x, y in zip(jax.tree.leaves(pc), jax.tree.leaves(pd), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert resumed["privacy/noise_seed_fixed"] is True
  assert "secret" in resumed["privacy/guarantee_note"]
  assert full["privacy/epsilon"] == resumed["privacy/epsilon"]


def test_default_run_releases_nothing_private_and_epsilon_is_rederived(default_run):
  tmp_path, summary = default_run
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  events = writers.read_metrics(tmp_path)
  # Eval metrics are computed on the public eval split; everything else must not hold an exact
  # statistic of the private training data.
  text = json.dumps({k: v for k, v in on_disk.items() if not k.startswith("eval/")})
  text += json.dumps([e for e in events if e["split"] != "eval"])
  for key in PRIVATE_KEYS:
    assert key not in text, key
  assert not any(e["split"] == "train" and "loss" in e for e in events)  # No exact train loss.
  assert any("privacy/epsilon" in e for e in events if e["split"] == "train")  # ε so far.
  assert summary["privacy/covered_by_epsilon"] is True
  # ε re-derived with dp_accounting from the records the ledger wrote equals the reported ε.
  acc = accounting.make_accountant("rdp", "poisson")
  for rec, n in summary["privacy/ledger"]:
    acc.compose(accounting.step_event("poisson", rec["sampling_rate"], rec["noise_multiplier"]), n)
  assert summary["privacy/epsilon"] == acc.get_epsilon(1e-5)
  assert summary["privacy/epsilon"] <= 3.0


def test_unsafe_stats_only_on_request_and_marked(tmp_path):
  summary = training.run(_config(release_unsafe_stats=True), tmp_path)
  assert summary["privacy/covered_by_epsilon"] is False
  assert summary["unsafe/num_examples"] > 0
  assert any("loss" in e for e in writers.read_metrics(tmp_path) if e["split"] == "train")


def test_shuffle_is_accounted_with_half_the_noise_multiplier(tmp_path):
  summary = training.run(_config(sampling="shuffle"), tmp_path)
  sigma, steps = summary["privacy/noise_multiplier"], summary["privacy/steps"]
  n, b = summary["data/num_train"], summary["privacy/logical_batch_size"]
  ev = accounting.run_event(
    [(sigma / 2, steps)], sampling="shuffle", sampling_rate=b / n, dataset_size=n
  )
  assert summary["privacy/epsilon"] == pytest.approx(
    accounting.epsilon(ev, 1e-5, sampling="shuffle"), rel=1e-9
  )
  assert summary["privacy/epsilon"] <= 3.0
  assert summary["privacy/neighboring_relation"] == "replace_one"


def test_changed_config_on_resume_is_refused_and_changes_nothing(tmp_path):
  training.run(_config(), tmp_path, stop_after_step=2)
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  for change in (dict(target_epsilon=2.0), dict(virtual_batch_size=16)):
    with pytest.raises(ConfigError, match="holds a different run"):
      training.run(_config(**change), tmp_path)
  lr = _config()
  lr.train.learning_rate = 0.5  # Any field, not only privacy.
  with pytest.raises(ConfigError, match="train.learning_rate"):
    training.run(lr, tmp_path)
  after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  assert before == after


def _launch(tmp_path, repo_root, *args):
  return subprocess.run(
    [sys.executable, "-m", "launch.train", *args, f"--workdir={tmp_path}"],
    cwd=repo_root,
    capture_output=True,
    text=True,
    check=False,
  )


@pytest.mark.parametrize(
  "args,field",
  [
    (["--config=configs/dp_nlu.py:smoke", "--config.privacy.delta=1.5"], "privacy.delta"),
    (["--config=configs/dp_nlu.py:smoke,eps=inf"], "privacy.target_epsilon=inf"),
  ],
)
def test_launch_rejects_bad_privacy_config_in_one_line(tmp_path, repo_root, args, field):
  out = _launch(tmp_path, repo_root, *args)
  assert out.returncode != 0
  lines = [line for line in out.stderr.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and field in lines[0]
  assert "Traceback" not in out.stderr


def test_every_privacy_field_overridable_from_the_command_line(tmp_path, repo_root):
  out = _launch(
    tmp_path,
    repo_root,
    "--config=configs/dp_nlu.py:smoke",
    "--config.privacy.noise_multiplier=1.1",
    "--config.privacy.target_epsilon=20",
    "--config.privacy.l2_clip_norm=auto",
    "--config.privacy.noise_seed=3",
  )
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["privacy/noise_multiplier"] == pytest.approx(1.1)
  assert summary["privacy/adaptive_clipping"] is True
  assert summary["privacy/noise_seed_fixed"] is True


def test_padding_skip_trains_the_same_model_and_says_so(tmp_path):
  # Same noise seed: same Poisson batches and noise; skipping all-padding micro-batches
  # (smoke: cap of 16-row micro-batches) must not change the trained parameters.
  config = _config(noise_seed=5)
  base = training.run(config, tmp_path / "pad")
  skip = training.run(_config(noise_seed=5, skip_padding=True), tmp_path / "skip")
  assert base["privacy/batch_rows"] > base["privacy/logical_batch_size"]  # There is padding.
  assert base["privacy/skip_padding"] is False and skip["privacy/skip_padding"] is True
  assert "privacy/timing_note" not in base and "wall_seconds" in skip["privacy/timing_note"]
  assert skip["privacy/epsilon"] == base["privacy/epsilon"]
  pa = loop.load_params(config, tmp_path / "pad")[0]
  pb = loop.load_params(_config(noise_seed=5, skip_padding=True), tmp_path / "skip")[0]
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
