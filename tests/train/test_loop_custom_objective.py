"""The loop's hooks for a custom objective: its own gradient function and logged aux scalars.

Oracles: the loop's default gradient function on the same objective (same parameters and
logged losses); the batch's real-row count (the batch size); Jensen's inequality between the
window means of loss² and loss.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import nlu
from trustml.core import rng as rng_lib
from trustml.train import experiment, loop, writers


@pytest.fixture(scope="module")
def config():
  c = nlu.get_config("smoke")
  c.train.num_steps = 4
  c.train.log_every = 2
  return c


def _grad_fn(model):
  """Mean loss gradient, plus two diagnostics: the batch's real rows and the squared loss."""

  def grad_fn(params, batch, key):
    def loss_fn(p):
      losses = model.per_example_loss(p, batch, rng_lib.named(key, "dropout"))
      return losses.sum() / jnp.maximum(batch["weight"].sum(), 1.0)

    value, grads = jax.value_and_grad(loss_fn)(params)
    return grads, {"loss": value, "rows": batch["weight"].sum(), "loss_sq": value**2}

  return grad_fn


def test_train_metrics_logs_the_named_aux_scalars(tmp_path, config):
  prepared = experiment.prepare(config)
  out = loop.fit(
    config,
    tmp_path / "custom",
    prepared=prepared,
    grad_fn=_grad_fn(prepared.model),
    train_metrics=("loss", "rows", "loss_sq", "absent"),
  )
  events = [e for e in writers.read_metrics(tmp_path / "custom") if e["split"] == "train"]
  assert [e["step"] for e in events] == [2, 4]
  assert "absent" not in events[0]  # Names the gradient function does not return: skipped.
  bs = config.train.batch_size
  assert events[0]["rows"] == pytest.approx(bs)  # Full batches of real rows.
  # Window mean of loss² >= (window mean of loss)² (Jensen), equal only for equal losses.
  for e in events:
    assert e["loss_sq"] >= e["loss"] ** 2 - 1e-6
  # Same objective through the default gradient function: same parameters, only `loss` logged.
  plain = loop.fit(config, tmp_path / "plain", prepared=prepared)
  for x, y in zip(
    jax.tree.leaves(out.state.params), jax.tree.leaves(plain.state.params), strict=True
  ):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  plain_events = [e for e in writers.read_metrics(tmp_path / "plain") if e["split"] == "train"]
  assert "rows" not in plain_events[0]
  assert [e["loss"] for e in plain_events] == pytest.approx([e["loss"] for e in events], rel=1e-6)


def test_init_params_replace_the_params_stream(tmp_path, config):
  prepared = experiment.prepare(config)
  default = loop.fit(config, tmp_path / "default", prepared=prepared)
  same = prepared.model.init(rng_lib.RngStreams(config.seed).stream("params"), prepared.train)
  given = loop.fit(config, tmp_path / "given", prepared=prepared, init_params=same)
  for x, y in zip(
    jax.tree.leaves(given.state.params), jax.tree.leaves(default.state.params), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  other = prepared.model.init(rng_lib.RngStreams(config.seed + 7).stream("params"), prepared.train)
  moved = loop.fit(config, tmp_path / "other", prepared=prepared, init_params=other)
  assert moved.summary["eval/loss"] != default.summary["eval/loss"]
