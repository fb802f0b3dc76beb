"""Bring your own Haiku functions: up-front contract checks, then DP training with ε."""

import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trustml
from trustml.core.validation import ConfigError
from trustml.models import haiku_adapter
from trustml.privacy import accounting


def embed_fn(tokens):
  return hk.Embed(60, 8, name="embed")(tokens)


def body_fn(emb, mask, is_training):
  del is_training
  m = mask[..., None].astype(emb.dtype)
  pooled = (emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
  return hk.Linear(2, name="head")(pooled), pooled


def only_logits(emb, mask, is_training):
  return body_fn(emb, mask, is_training)[0]  # Forgets the pooled output.


def no_training_flag(emb, mask):
  return body_fn(emb, mask, False)


def _data(n=400, t=6, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(1, 60, (n, t))
  return x, (x[:, 0] < 30).astype(np.int64)


def _model(embed=embed_fn, body=body_fn, **kw):
  kw = {"name": "hk_mine", "num_classes": 2, "embedding_path": ("embed", "embeddings"), **kw}
  return trustml.models.from_haiku(embed, body, **kw)


def test_missing_pieces_are_named_in_one_line_up_front():
  whole = hk.transform(lambda tokens, mask: body_fn(embed_fn(tokens), mask, False)[0])
  with pytest.raises(ConfigError) as e:
    _model(whole, None)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith("embed_fn=Transformed, body_fn=None are invalid: pass the untransformed")
  assert "body_fn(embeddings, mask, is_training) -> (logits, pooled)" in msg
  with pytest.raises(ConfigError, match=r"^body_fn=no_training_flag is invalid: must accept"):
    _model(body=no_training_flag)
  with pytest.raises(ConfigError, match=r"^states_fn=embed_fn is invalid: must accept"):
    _model(states_fn=embed_fn)
  with pytest.raises(ConfigError, match=r"^embed_fn=Embed is invalid: is a Flax module: use"):
    _model(nn.Embed(60, 8))
  with pytest.raises(ConfigError, match=r"^embedding_path='embed' is invalid"):
    _model(embedding_path="embed")
  with pytest.raises(ConfigError, match=r"^kind='regressor' is invalid"):
    _model(kind="regressor")
  with pytest.raises(ConfigError, match=r"^num_classes=0 is invalid"):
    _model(num_classes=0)


def test_wrong_outputs_are_named_before_training():
  x, y = _data()
  with pytest.raises(ConfigError, match=r"^body_fn=only_logits is invalid: returned an array of"):
    trustml.train.from_arrays(_model(body=only_logits), (x, y), (x, y))
  with pytest.raises(
    ConfigError, match=r"^embed_fn=<lambda> is invalid: returned shape \(\d+, 8\) for"
  ):
    trustml.train.from_arrays(_model(lambda t: embed_fn(t).mean(1)), (x, y), (x, y))
  with pytest.raises(ConfigError, match=r"embedding_path=\('table',\) is invalid.*from_haiku"):
    trustml.train.from_arrays(_model(embedding_path=("table",)), (x, y), (x, y))


def test_dp_training_of_your_own_haiku_functions_on_your_own_arrays(tmp_path):
  x, y = _data(n=600)
  model = _model()
  prepared = trustml.train.from_arrays(model, (x[:500], y[:500]), (x[500:], y[500:]))
  config = trustml.configs.dp_nlu.get_config("smoke,eps=2")
  config.train.batch_size, config.privacy.virtual_batch_size = 32, 64
  summary = trustml.train.run(config, tmp_path / "run", prepared=prepared, progress=False)
  assert summary["model/name"] == "hk_mine" and summary["data/num_train"] == 500
  params = model.init(jax.random.key(0), prepared.train)
  assert summary["model/num_params"] == 60 * 8 + 8 * 2 + 2
  assert sum(p.size for p in jax.tree.leaves(params)) == summary["model/num_params"]
  eps = summary["privacy/epsilon"]
  assert 0 < eps <= 2.0 + 1e-9
  # The reported ε is dp_accounting's for the σ, q and steps that ran (RDP, Poisson).
  event = accounting.run_event(
    [(summary["privacy/noise_multiplier"], summary["train/steps"])],
    sampling="poisson",
    sampling_rate=summary["privacy/sampling_rate"],
  )
  np.testing.assert_allclose(accounting.epsilon(event, summary["privacy/delta"]), eps, rtol=1e-6)


def test_the_reference_haiku_model_passes_the_check():
  haiku_adapter.check_haiku_functions(embed_fn, body_fn, lambda emb, mask: emb)
  x, y = _data(n=64)
  model = haiku_adapter.haiku_bag_classifier(60, 2)
  trustml.train.from_arrays(model, (x, y), (x, y))
