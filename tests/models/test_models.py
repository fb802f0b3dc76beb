"""Model contract tests: shapes, masking invariance, float64 gradient check, Haiku adapter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import make_batch
from trustml.models import contract, haiku_adapter, registry

T, V, C = 8, 50, 3


def _model(name, **over):
  cfg = registry.default_model_config(name)
  for k, v in dict(embed_dim=16, hidden_dim=16, num_filters=8, mlp_dim=32).items():
    if k in cfg:
      cfg[k] = v
  if "num_layers" in cfg:
    cfg.num_layers, cfg.num_heads, cfg.dropout_rate = 2, 2, 0.0
  cfg.update(over)
  return registry.build_model(cfg, vocab_size=V, num_classes=C, max_len=T)


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_shapes_and_contract(name):
  m = _model(name)
  batch = make_batch(4, T, V, C)
  p = m.init(jax.random.key(0), batch)
  logits = m.apply(p, batch)
  want = (4, T, V) if name == "causal_lm" else (4, C)
  assert logits.shape == want
  assert m.per_example_loss(p, batch).shape == (4,)
  emb = m.embed(p, batch)
  assert emb.shape[:2] == (4, T)
  np.testing.assert_allclose(m.apply_from_embeddings(p, emb, batch), logits, rtol=1e-6, atol=1e-6)
  assert m.pooled(p, batch).shape[0] == 4
  assert m.embedding_table(p).shape[0] == V


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_padding_tokens_change_nothing(name):
  m = _model(name)
  batch = make_batch(4, T, V, C, seed=1)
  p = m.init(jax.random.key(0), batch)
  noisy = dict(batch)
  noisy["tokens"] = np.where(batch["mask"], batch["tokens"], 7).astype(np.int32)
  a, b = m.apply(p, batch), m.apply(p, noisy)
  if name == "causal_lm":  # Only valid positions are defined for an LM.
    a, b = a[batch["mask"]], b[batch["mask"]]
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


ORDERED = dict(conv_kernel=3, causal_attention=True, pooling="last")


def test_masked_max_ignores_padding_and_empty_rows():
  from trustml.models import layers

  x = np.array([[[1.0, -5.0], [3.0, -2.0], [9.0, 9.0]], [[-1.0, -4.0], [7.0, 7.0], [0.0, 0.0]]])
  mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
  np.testing.assert_array_equal(layers.masked_max(x, mask), [[3.0, -2.0], [-1.0, -4.0]])
  np.testing.assert_array_equal(layers.masked_max(x, np.zeros((2, 3), bool)), np.zeros((2, 2)))


def test_masked_last_picks_the_last_valid_state():
  from trustml.models import layers

  x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
  mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], bool)  # Row 1: non-contiguous.
  np.testing.assert_array_equal(layers.masked_last(x, mask), x[[0, 1], [2, 3]])
  none = np.zeros((1, 5), bool)
  np.testing.assert_array_equal(layers.masked_last(x[:1], none), x[0, :1])


@pytest.mark.parametrize(
  "over",
  [ORDERED, dict(ORDERED, pooling="max"), dict(conv_kernel=3), dict(pooling="last")],
)
def test_transformer_variants_contract_padding_and_gradients(over):
  m = _model("transformer", **over)
  batch = make_batch(4, T, V, C, seed=1)
  p = m.init(jax.random.key(0), batch)
  assert m.apply(p, batch).shape == (4, C)
  noisy = dict(batch)
  noisy["tokens"] = np.where(batch["mask"], batch["tokens"], 7).astype(np.int32)
  np.testing.assert_allclose(m.apply(p, batch), m.apply(p, noisy), rtol=1e-5, atol=1e-5)
  _check_float64_finite_differences(m, make_batch(2, 6, V, C, seed=3), directions=1)


def test_causal_transformer_states_ignore_later_tokens():
  """Causal stem + causal attention: changing token j changes no state before position j."""
  from trustml.models import networks

  net = networks.TransformerEncoder(V, C, T, embed_dim=16, num_layers=2, num_heads=2, **ORDERED)
  batch = make_batch(2, T, V, C, seed=2)
  mask = np.ones((2, T), bool)
  tokens = np.asarray(batch["tokens"])
  variables = net.init(jax.random.key(0), tokens, mask)

  def states(tok):
    emb = net.apply(variables, tok, method="embed_tokens")
    return np.asarray(net.apply(variables, emb, mask, method="encode"))

  base = states(tokens)
  for j in (1, 4, T - 1):
    changed = tokens.copy()
    changed[:, j] = (changed[:, j] + 1) % V
    after = states(changed)
    np.testing.assert_allclose(after[:, :j], base[:, :j], rtol=1e-6, atol=1e-6)
    assert not np.allclose(after[:, j], base[:, j])


def test_weight_zero_examples_contribute_nothing():
  m = _model("bag")
  batch = make_batch(4, T, V, C)
  p = m.init(jax.random.key(0), batch)
  batch["weight"] = np.array([1, 0, 1, 0], np.float32)
  losses = m.per_example_loss(p, batch)
  assert float(losses[1]) == 0.0 and float(losses[3]) == 0.0
  sums = m.eval_metrics(p, batch)
  assert float(sums["count"]) == 2.0


@pytest.mark.parametrize("name", ["bag", "cnn", "transformer", "causal_lm"])
def test_gradient_matches_float64_finite_differences(name):
  """<grad L, v> equals the float64 central difference along random directions v."""
  _check_float64_finite_differences(_model(name), make_batch(2, 6, V, C, seed=3), directions=3)


def _check_float64_finite_differences(m, batch, directions):
  with jax.enable_x64(True):
    p = jax.tree.map(lambda x: x.astype(jnp.float64), m.init(jax.random.key(0), batch))
    loss = jax.jit(lambda q: m.per_example_loss(q, batch).sum())
    g = jax.jit(jax.grad(lambda q: m.per_example_loss(q, batch).sum()))(p)
    rng = np.random.default_rng(0)
    eps = 1e-5
    for _ in range(directions):
      v = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), p)
      plus = jax.tree.map(lambda x, d: x + eps * d, p, v)
      minus = jax.tree.map(lambda x, d: x - eps * d, p, v)
      fd = (loss(plus) - loss(minus)) / (2 * eps)
      analytic = sum(
        float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v), strict=True)
      )
      np.testing.assert_allclose(analytic, float(fd), rtol=1e-6, atol=1e-9)


def test_dropout_needs_rng_and_is_deterministic_per_key():
  m = _model("transformer", dropout_rate=0.5)
  batch = make_batch(4, T, V, C)
  p = m.init(jax.random.key(0), batch)
  with pytest.raises(ValueError, match="rng"):
    m.apply(p, batch, train=True)
  a = m.per_example_loss(p, batch, jax.random.key(1))
  b = m.per_example_loss(p, batch, jax.random.key(1))
  c = m.per_example_loss(p, batch, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_lm_loss_is_next_token_nll():
  m = _model("causal_lm")
  batch = make_batch(2, T, V, C)
  p = m.init(jax.random.key(0), batch)
  logits = np.asarray(m.apply(p, batch), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  for i in range(2):
    n = int(batch["mask"][i].sum())
    nll = [-logp[i, t, batch["tokens"][i, t + 1]] for t in range(n - 1)]
    np.testing.assert_allclose(m.per_example_loss(p, batch)[i], np.mean(nll), rtol=1e-5)


def test_haiku_adapter_contract():
  m = haiku_adapter.haiku_bag_classifier(V, C)
  batch = make_batch(4, T, V, C)
  p = m.init(jax.random.key(0), batch)
  assert m.apply(p, batch).shape == (4, C)
  assert m.framework == "haiku"
  np.testing.assert_allclose(
    m.apply_from_embeddings(p, m.embed(p, batch), batch), m.apply(p, batch), rtol=1e-6
  )
  assert m.embedding_table(p).shape == (V, 32)


def test_bad_model_configs():
  from trustml.core.validation import ConfigError

  with pytest.raises(ConfigError, match="model.name"):
    registry.default_model_config("lstm")
  cfg = registry.default_model_config("transformer")
  cfg.num_heads = 3
  with pytest.raises(ConfigError, match="num_heads"):
    registry.build_model(cfg, vocab_size=V, num_classes=C, max_len=T)
  cfg = registry.default_model_config("bag")
  cfg.embed_dim = 0
  with pytest.raises(ConfigError, match="model.embed_dim"):
    registry.build_model(cfg, vocab_size=V, num_classes=C, max_len=T)
  for field, bad in (("pooling", "cls"), ("conv_kernel", -1), ("causal_attention", "yes")):
    cfg = dict(registry.default_model_config("transformer"), **{field: bad})
    with pytest.raises(ConfigError, match=f"model.{field}"):
      registry.validate_model(cfg)
  cfg = registry.default_model_config("bag")
  cfg.unknown_field = 3
  with pytest.raises(ConfigError, match="unknown_field"):
    registry.validate_model(cfg)


def test_public_api():
  import trustml.models as models

  assert set(models.__all__) >= {"Model", "build_model", "from_haiku", "default_model_config"}
  assert contract.Model is models.Model


@pytest.mark.parametrize("width,causal", [(5, True), (5, False), (4, False), (1, True)])
def test_windows_dense_equals_conv(width, causal):
  """Dense over layers.windows == nn.Conv with the same kernel (causal: left padding only)."""
  from flax import linen as nn

  from trustml.models import layers

  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 3)), jnp.float32)
  padding = ((width - 1, 0),) if causal else "SAME"
  conv = nn.Conv(4, (width,), padding=padding)
  p = conv.init(jax.random.key(0), x)
  kernel = p["params"]["kernel"]  # [width, 3, 4]
  dense = layers.windows(x, width, causal) @ kernel.reshape(width * 3, 4) + p["params"]["bias"]
  np.testing.assert_allclose(dense, conv.apply(p, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_token_states_are_the_vectors_pooling_reads(name):
  """Oracle per architecture: pooling the token states gives the pooled representation
  (bag: the masked mean of embeddings, before its MLP; CNN: max over time; transformer: mean;
  causal LM: the final states the LM head reads)."""
  m = _model(name)
  batch = make_batch(4, T, V, C, seed=2)
  p = m.init(jax.random.key(0), batch)
  states = np.asarray(m.token_states(p, batch))
  mask = np.asarray(batch["mask"], bool)
  assert states.shape[:2] == (4, T) and np.all(states[~mask] == 0)
  mean = states.sum(1) / mask.sum(1, keepdims=True)
  if name == "bag":
    emb = np.asarray(m.embed(p, batch))
    np.testing.assert_allclose(states, emb * mask[..., None], rtol=1e-6)
  elif name == "cnn":
    np.testing.assert_allclose(states.max(1), m.pooled(p, batch), rtol=1e-5, atol=1e-6)
  elif name == "transformer":
    np.testing.assert_allclose(mean, m.pooled(p, batch), rtol=1e-5, atol=1e-5)
  else:  # the LM head is the tied embedding table applied to each state
    logits = states @ np.asarray(m.embedding_table(p)).T
    np.testing.assert_allclose(logits[mask], np.asarray(m.apply(p, batch))[mask], atol=1e-4)
  # Context: in a transformer a token's state depends on the other tokens; in a bag it does not.
  other = dict(batch, tokens=np.where(np.arange(T) == 0, 5, batch["tokens"]).astype(np.int32))
  moved = np.asarray(m.token_states(p, other))
  changed = not np.allclose(moved[:, 1:][mask[:, 1:]], states[:, 1:][mask[:, 1:]], atol=1e-6)
  assert changed == (name in ("transformer", "causal_lm", "cnn"))


def test_haiku_token_states():
  m = haiku_adapter.haiku_bag_classifier(V, C)
  batch = make_batch(4, T, V, C)
  p = m.init(jax.random.key(0), batch)
  states = np.asarray(m.token_states(p, batch))
  want = np.asarray(m.embed(p, batch)) * np.asarray(batch["mask"])[..., None]
  np.testing.assert_allclose(states, want, rtol=1e-6)
