"""Bring your own Flax model and arrays: up-front contract checks, then DP training with ε."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trustml
from trustml.core.validation import ConfigError
from trustml.models import registry


class MeanPool(nn.Module):
  """A complete user module: embedding lookup, mean pool, linear head."""

  vocab: int = 60
  classes: int = 2

  def setup(self):
    self.embed = nn.Embed(self.vocab, 8)
    self.head = nn.Dense(self.classes)

  def embed_tokens(self, tokens):
    return self.embed(tokens)

  def pool(self, emb, mask, train=False):
    m = mask[..., None].astype(emb.dtype)
    return (emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

  def from_embeddings(self, emb, mask, train=False):
    return self.head(self.pool(emb, mask, train))

  def __call__(self, tokens, mask, train=False):
    return self.from_embeddings(self.embed_tokens(tokens), mask, train)


class RawMix(MeanPool):
  """A table computed from a parameter (``tanh(mix)``) gathered at data-dependent ids: no ghost
  rule (a raw table gathered is a lookup site; a gather has no per-example expanded form), the
  per-example fallback."""

  def setup(self):
    super().setup()
    self.mix = self.param("mix", nn.initializers.normal(1.0), (8, 2))

  def from_embeddings(self, emb, mask, train=False):
    pooled = self.pool(emb, mask, train)
    return self.head(pooled) + jnp.tanh(self.mix)[jnp.argmax(pooled, -1)]


class CallOnly(nn.Module):
  @nn.compact
  def __call__(self, tokens, mask, train=False):
    return nn.Dense(2)(nn.Embed(60, 8)(tokens).mean(1))


class NoMask(MeanPool):
  def __call__(self, tokens):  # Lacks the (mask, train) arguments of the contract.
    return super().__call__(tokens, tokens != 0)


class Renamed(MeanPool):
  def setup(self):
    self.table = nn.Embed(self.vocab, 8)
    self.head = nn.Dense(self.classes)

  def embed_tokens(self, tokens):
    return self.table(tokens)


def _data(n=400, t=6, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(1, 60, (n, t))
  return x, (x[:, 0] < 30).astype(np.int64)


def test_missing_methods_are_named_up_front():
  with pytest.raises(ConfigError) as e:
    registry.from_flax(CallOnly(), name="c", kind="classifier", num_classes=2)
  msg = str(e.value)
  assert msg.startswith("module=CallOnly is invalid: it lacks embed_tokens, from_embeddings, pool")
  assert "from_embeddings(embeddings, mask, train)" in msg
  with pytest.raises(ConfigError, match=r"module=NoMask is invalid: __call__ must accept"):
    registry.from_flax(NoMask(), name="n", kind="classifier", num_classes=2)
  with pytest.raises(ConfigError, match="from_haiku"):
    registry.from_flax(lambda x: x, name="f", kind="classifier", num_classes=2)


def test_check_model_names_a_wrong_embedding_path_and_class_count():
  x, y = _data()
  model = registry.from_flax(Renamed(), name="r", kind="classifier", num_classes=2)
  with pytest.raises(ConfigError, match=r"embedding_path=\('embed', 'embedding'\) is invalid"):
    trustml.train.from_arrays(model, (x, y), (x, y))
  fixed = registry.from_flax(
    Renamed(), name="r", kind="classifier", num_classes=2, embedding_path=("table", "embedding")
  )
  trustml.train.from_arrays(fixed, (x, y), (x, y))
  wrong = registry.from_flax(MeanPool(classes=3), name="m", kind="classifier", num_classes=2)
  with pytest.raises(ConfigError, match=r"num_classes=2 is invalid: the module returns logits"):
    trustml.train.from_arrays(wrong, (x, y), (x, y))


def test_from_arrays_rejects_bad_shapes():
  x, y = _data()
  model = registry.from_flax(MeanPool(), name="m", kind="classifier", num_classes=2)
  with pytest.raises(ConfigError, match=r"train.labels shape=\(399,\) is invalid"):
    trustml.train.from_arrays(model, (x, y[:-1]), (x, y))
  with pytest.raises(ConfigError, match=r"eval.tokens shape=\(400,\) .* is invalid"):
    trustml.train.from_arrays(model, (x, y), (x[:, 0], y))


def test_dp_training_of_your_own_module_on_your_own_arrays(tmp_path):
  x, y = _data(n=600)
  model = trustml.models.from_flax(MeanPool(), name="mine", kind="classifier", num_classes=2)
  prepared = trustml.train.from_arrays(model, (x[:500], y[:500]), (x[500:], y[500:]))
  config = trustml.configs.dp_nlu.get_config("smoke,eps=2")
  config.train.batch_size, config.privacy.virtual_batch_size = 32, 64
  summary = trustml.train.run(config, tmp_path / "run", prepared=prepared, progress=False)
  assert summary["data/num_train"] == 500 and summary["model/name"] == "mine"
  assert 0 < summary["privacy/epsilon"] <= 2.0 + 1e-9
  assert summary["privacy/ghost_residual_leaves"] == []  # Every leaf has a ghost rule.
  assert "privacy/ghost_fallback" not in summary
  params, _ = jax.tree.flatten(model.init(jax.random.key(0), prepared.train))
  assert summary["model/num_params"] == sum(p.size for p in params)


def test_dp_training_measures_and_reports_a_ghost_fallback(tmp_path, caplog):
  x, y = _data(n=300)
  model = trustml.models.from_flax(RawMix(), name="rawmix", kind="classifier", num_classes=2)
  prepared = trustml.train.from_arrays(model, (x[:250], y[:250]), (x[250:], y[250:]))
  config = trustml.configs.dp_nlu.get_config("smoke,eps=2")
  config.train.batch_size, config.privacy.virtual_batch_size = 16, 32
  with caplog.at_level(logging.WARNING):
    summary = trustml.train.run(config, tmp_path / "run", prepared=prepared, progress=False)
  assert summary["privacy/ghost_residual_leaves"] == ["mix"]
  cost = summary["privacy/ghost_fallback"]
  assert cost["copies_mb"] == 16 * 16 * 4 / 2**20  # 16 per-example copies of an 8 x 2 table.
  assert cost["edp_step_s"] > 0 and cost["plain_step_s"] > 0
  assert cost["ratio"] == cost["edp_step_s"] / cost["plain_step_s"]
  assert "no ghost-norm rule (mix)" in caplog.text and "16-row micro-batch" in caplog.text


def test_fallback_cost_rejects_bad_arguments_before_tracing():
  from trustml.privacy import ghost  # noqa: PLC0415

  def never(*_):
    raise AssertionError("traced")

  with pytest.raises(ConfigError, match=r"reps=0 is invalid"):
    ghost.fallback_cost(never, {}, {"weight": np.ones(2)}, reps=0)
  with pytest.raises(ConfigError, match=r"l2_clip_norm=-1.0 is invalid"):
    ghost.fallback_cost(never, {}, {"weight": np.ones(2)}, l2_clip_norm=-1.0)
