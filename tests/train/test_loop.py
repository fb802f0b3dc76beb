"""Training loop: exact resume, run-contract files, Haiku model through the same loop."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from configs import nlu
from trustml.core.validation import ConfigError
from trustml.models import haiku_adapter
from trustml.train import experiment, loop, writers


def _leaves_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def smoke_config():
  c = nlu.get_config("smoke,model=transformer")
  c.model.dropout_rate = 0.1  # Dropout keys must also be derived from the step.
  c.train.num_steps = 7
  return c


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, smoke_config):
  full = loop.fit(smoke_config, tmp_path / "full")
  # Step 3 is also a periodic checkpoint step (checkpoint_every=3): saved once, not twice.
  part = loop.fit(smoke_config, tmp_path / "resumed", stop_after_step=3)
  assert part.summary == {"train/interrupted_at": 3}
  resumed = loop.fit(smoke_config, tmp_path / "resumed")
  assert resumed.summary["train/steps"] == 7
  _leaves_equal(full.state.params, resumed.state.params)
  _leaves_equal(full.state.opt_state, resumed.state.opt_state)
  assert full.summary["eval/accuracy"] == resumed.summary["eval/accuracy"]


def test_run_contract_files(tmp_path, smoke_config):
  wd = tmp_path / "run"
  loop.fit(smoke_config, wd)
  cfg = json.loads((wd / "config.json").read_text())
  assert cfg["model"]["name"] == "transformer"
  events = writers.read_metrics(wd)
  assert all({"step", "split"} <= set(e) for e in events)
  assert any(e["split"] == "eval" and "accuracy" in e for e in events)
  summary = writers.read_summary(wd)
  for key in ("eval/accuracy", "eval/loss", "train/steps", "train/wall_seconds"):
    assert key in summary
  assert 0.0 < summary["train/first_step_seconds"] <= summary["train/wall_seconds"]
  assert 0.0 <= summary["eval/accuracy"] <= 1.0


def test_haiku_model_runs_through_the_same_loop(tmp_path):
  c = nlu.get_config("smoke")
  c.train.num_steps = 30
  c.train.learning_rate = 1e-2
  prepared = experiment.prepare(c)
  model = haiku_adapter.haiku_bag_classifier(
    prepared.tokenizer.vocab_size, prepared.model.num_classes
  )
  prepared = dataclasses.replace(prepared, model=model)
  out = loop.fit(c, tmp_path / "h", prepared=prepared)
  assert out.summary["model/name"] == "haiku_bag"
  assert out.summary["train/steps"] == 30
  # It learns: training loss falls.
  losses = [e["loss"] for e in writers.read_metrics(tmp_path / "h") if e["split"] == "train"]
  assert losses[-1] < losses[0]


def test_default_job_learns_the_embedded_corpus(tmp_path):
  c = nlu.get_config("smoke")
  c.data.num_users = 200
  c.train.num_steps = 150
  c.train.batch_size = 32
  c.train.learning_rate = 5e-3
  summary = loop.train(c, tmp_path / "learn")
  # 10+ intents: chance is < 0.1.
  assert summary["eval/accuracy"] > 0.8


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("train.batch_size", 0, "train.batch_size"),
    ("train.optimizer", "lbfgs", "train.optimizer"),
    ("text.max_len", -1, "text.max_len"),
    ("model.name", "lstm", "model.name"),
    ("data.name", "mnist", "data.name"),
  ],
)
def test_bad_configs_fail_before_compute(tmp_path, field, value, match):
  c = nlu.get_config("smoke")
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(ConfigError, match=match):
    loop.fit(c, tmp_path / "bad")
  assert not (tmp_path / "bad" / "checkpoints").exists()


def test_unknown_config_field(tmp_path):
  c = nlu.get_config("smoke")
  c.train.lerning_rate = 0.1
  with pytest.raises(ConfigError, match="lerning_rate"):
    loop.fit(c, tmp_path / "bad")
