"""Measured sensitivity of every central DP path on neighbouring datasets, noise off.

For each path (naive DP-SGD and eDP-SGD; flat and per-layer clipping; one or several
micro-batches; Poisson (add/remove-one) and shuffle (replace-one); adaptive clipping's count),
build neighbouring batches under the relation the path declares, run the released aggregate
with σ = 0, and assert that the largest L2 change is at most the sensitivity the path reports
to the ledger (``aux["dp/sensitivity"]``, ``aux["dp/count_sensitivity"]``). The worst case is
approached (a huge-gradient example is clipped to norm C exactly), so a path that under-reports
its sensitivity fails.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trustml.core import rng as rng_lib
from trustml.models import registry
from trustml.privacy import mechanism

B, T, V, K, C = 8, 6, 30, 3, 0.05


def _model():
  cfg = registry.default_model_config("bag")
  cfg.update(embed_dim=8, hidden_dim=8, dropout_rate=0.0)
  model = registry.build_model(cfg, vocab_size=V, num_classes=K, max_len=T)
  return model


def _batch(seed):
  rng = np.random.default_rng(seed)
  return {
    "tokens": jnp.asarray(rng.integers(4, V, (B, T)).astype(np.int32)),
    "mask": jnp.ones((B, T), bool),
    "label": jnp.asarray(rng.integers(0, K, B).astype(np.int32)),
    "weight": jnp.ones((B,), jnp.float32),
    "index": jnp.arange(B, dtype=jnp.int32),
  }


MODEL = _model()
PARAMS = MODEL.init(jax.random.key(0), _batch(0))


_JITTED = {}


def _released(dp, batch):
  """The clipped sum (direction × normaliser, σ = 0) and the clipped count a step releases."""
  state = dp.init(PARAMS)
  fn = _JITTED.setdefault(id(dp), jax.jit(dp))
  direction, aux, _ = fn(PARAMS, batch, jax.random.key(1), state)
  flat = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(direction)])
  count = float(aux.get("dp/unclipped_fraction", 0.0)) * dp.normaliser
  return flat * dp.normaliser, count, aux


def _dp(mech, clipping, physical, sampling, adaptive, noise_multiplier=0.0, skip_padding=False):
  return mechanism.dp_sgd(
    MODEL.per_example_loss,
    mechanism=mech,
    l2_clip_norm=C,
    noise_multiplier=noise_multiplier,
    normaliser=float(B),
    key_data=rng_lib.SecretStreams.fresh().key_data("dp_noise"),
    sampling=sampling,
    physical_batch_size=physical,
    clipping=clipping,
    adaptive=mechanism.AdaptiveClipping(0.5, 0.2, 1e-9) if adaptive else None,
    dropout=False,
    skip_padding=skip_padding,
  )


def _neighbours(sampling):
  """(D, D') pairs: remove one example (weight 0) or replace it with a very different one."""
  base = _batch(1)
  for j in range(B):
    if sampling == "poisson":
      yield base, dict(base, weight=base["weight"].at[j].set(0.0))
    else:
      other = _batch(100 + j)
      yield base, {k: v.at[j].set(other[k][j]) if k != "index" else v for k, v in base.items()}


# Micro-batching (physical 4 of 8 rows) is exercised with flat clipping; per-layer in one batch.
# skip_padding (Poisson, 1-row micro-batches): removing the last example shortens the trip count.
PATHS = [
  (mech, clipping, 4 if clipping == "flat" else None, sampling, False)
  for mech, clipping, sampling in itertools.product(
    ("dp_sgd", "edp_sgd"), ("flat", "per_layer"), ("poisson", "shuffle")
  )
] + [(mech, "flat", 1, "poisson", True) for mech in ("dp_sgd", "edp_sgd")]


@pytest.mark.parametrize("mech,clipping,physical,sampling,skip", PATHS)
def test_measured_sensitivity_is_at_most_the_declared_one(mech, clipping, physical, sampling, skip):
  dp = _dp(mech, clipping, physical, sampling, adaptive=(clipping == "flat"), skip_padding=skip)
  worst = worst_count = 0.0
  declared = count_declared = None
  for d, d2 in _neighbours(sampling):
    s1, c1, aux = _released(dp, d)
    s2, c2, _ = _released(dp, d2)
    worst = max(worst, float(np.linalg.norm(s1 - s2)))
    worst_count = max(worst_count, abs(c1 - c2))
    declared, count_declared = float(aux["dp/sensitivity"]), float(aux["dp/count_sensitivity"])
  factor = 1.0 if sampling == "poisson" else 2.0
  assert declared == pytest.approx(factor * C)
  assert worst <= declared * (1 + 1e-4), (worst, declared)
  assert worst > 0.5 * C  # Clipping is active: the bound is approached, not vacuous.
  if clipping == "flat":  # Adaptive clipping's count query is on for these paths.
    assert worst_count <= count_declared + 1e-6
    assert count_declared == (0.5 if sampling == "poisson" else 1.0)


def test_noise_is_one_draw_of_the_stated_std_from_the_secret_key():
  dp = _dp("edp_sgd", "flat", 4, "poisson", adaptive=False, noise_multiplier=2.0)
  quiet = _dp("edp_sgd", "flat", 4, "poisson", adaptive=False)
  clean, _, _ = _released(quiet, _batch(1))
  noisy, _, aux = _released(dp, _batch(1))
  residual = noisy - clean
  assert float(aux["dp/noise_std"]) == pytest.approx(2.0 * C)
  # ~1,100 coordinates: the sample std is within 10% of σC with overwhelming probability.
  assert np.std(residual) == pytest.approx(2.0 * C, rel=0.1)
  # A second transformation with another secret draws other noise for the same batch and step.
  other = _dp("edp_sgd", "flat", 4, "poisson", adaptive=False, noise_multiplier=2.0)
  assert not np.allclose(_released(other, _batch(1))[0], noisy)


class _RawPositions(nn.Module):
  """Positions reach the examples by broadcasting only: a raw table and an Embed at arange."""

  @nn.compact
  def __call__(self, tokens):
    t = tokens.shape[1]
    x = nn.Embed(V, 8, name="embed")(tokens)
    x = x + self.param("pos", nn.initializers.normal(1.0), (T, 8))[None, :t]
    x = x * self.param("scale", nn.initializers.ones, (8,))
    x = x + nn.Embed(T, 8, name="pos_embed")(jnp.arange(t))  # Position axis (size T == batch).
    return nn.Dense(K, name="head")(jnp.tanh(x).mean(1))


@pytest.mark.parametrize("mech", ["dp_sgd", "edp_sgd"])
def test_measured_sensitivity_with_broadcast_parameters_at_batch_equal_length(mech):
  """eDP's broadcast sites and its batch-axis check, on a batch of T rows (B == T)."""
  module = _RawPositions()

  def loss(params, batch, rng=None):
    del rng
    logits = module.apply({"params": params}, batch["tokens"])
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], -1)[:, 0]
    return nll * batch["weight"]

  base = {k: v[:T] for k, v in _batch(1).items()}
  params = module.init(jax.random.key(0), base["tokens"])["params"]
  dp = mechanism.dp_sgd(
    loss,
    mechanism=mech,
    l2_clip_norm=C,
    noise_multiplier=0.0,
    normaliser=float(T),
    key_data=rng_lib.SecretStreams.fresh().key_data("dp_noise"),
    sampling="poisson",
    dropout=False,
  )
  fn = jax.jit(dp)

  def released(batch):
    direction, aux, _ = fn(params, batch, jax.random.key(1), dp.init(params))
    flat = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(direction)]
    return np.concatenate(flat) * dp.normaliser, float(aux["dp/sensitivity"])

  s1, declared = released(base)
  worst = max(
    float(np.linalg.norm(s1 - released(dict(base, weight=base["weight"].at[j].set(0.0)))[0]))
    for j in range(T)
  )
  assert declared == pytest.approx(C)
  assert 0.5 * C < worst <= declared * (1 + 1e-4), (worst, declared)
