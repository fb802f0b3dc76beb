"""Sampling, adaptive clipping and config validation (ConfigError before compute)."""

import math

import numpy as np
import pytest

from trustml.core import rng as rng_lib
from trustml.core.validation import ConfigError
from trustml.privacy import adaptive, sampling
from trustml.privacy import config as privacy_config

N = 500


def _arrays(n=N):
  return {
    "tokens": np.arange(n * 4, dtype=np.int32).reshape(n, 4),
    "mask": np.ones((n, 4), bool),
    "label": np.zeros(n, np.int32),
    "weight": np.ones(n, np.float32),
    "index": np.arange(n, dtype=np.int32),
    "group": np.zeros(n, np.int32),
    "user_id": np.zeros(n, np.int32),
  }


def test_poisson_cap_bounds_run_wide_truncation():
  cap = sampling.poisson_cap(N, 0.1, 8, 1000, 1e-8)
  assert cap % 8 == 0
  assert 1000 * sampling.truncation_probability(N, 0.1, cap) <= 1e-8
  assert 1000 * sampling.truncation_probability(N, 0.1, cap - 8) > 1e-8


def test_poisson_batches_are_fixed_shape_and_padded_with_weight_zero():
  secret = rng_lib.SecretStreams.fresh()
  b0 = sampling.poisson_batch(_arrays(), 0.1, 96, secret, 0)
  b0_again, b1 = (
    sampling.poisson_batch(_arrays(), 0.1, 96, secret, 0),
    sampling.poisson_batch(_arrays(), 0.1, 96, secret, 1),
  )
  assert b0["tokens"].shape == (96, 4)
  real = b0["weight"] > 0
  assert 20 < real.sum() < 80 and np.all(b0["index"][~real] == -1)
  np.testing.assert_array_equal(b0["index"], b0_again["index"])
  assert not np.array_equal(b0["index"], b1["index"])
  assert not any(k.startswith("dp_") for k in b0)  # Data only: nothing private about the draw.
  other = sampling.poisson_batch(_arrays(), 0.1, 96, rng_lib.SecretStreams.fresh(), 0)
  assert not np.array_equal(b0["index"], other["index"])  # Coins come from the secret.
  # Truncation: a cap far below the expected size keeps a random subset of exactly cap rows.
  tiny = sampling.poisson_batch(_arrays(), 0.5, 8, secret, 0)
  assert tiny["weight"].sum() == 8


def test_poisson_batches_dealt_over_blocks_hold_real_rows_first_in_every_block():
  secret = rng_lib.SecretStreams.fresh()
  flat = sampling.poisson_batch(_arrays(), 0.1, 96, secret, 3)
  blocks = sampling.poisson_batch(_arrays(), 0.1, 96, secret, 3, num_blocks=4)
  real = flat["index"][flat["index"] >= 0]
  np.testing.assert_array_equal(np.sort(blocks["index"][blocks["index"] >= 0]), np.sort(real))
  for k in flat:  # Same rows, permuted: every column follows its row.
    order = np.argsort(blocks["index"][blocks["index"] >= 0])
    np.testing.assert_array_equal(blocks[k][blocks["index"] >= 0][order], flat[k][: real.size])
  counts = []
  for block in np.split(blocks["weight"], 4):
    live = block > 0
    counts.append(int(live.sum()))
    assert not np.any(live[live.sum() :]) and np.all(live[: live.sum()])  # Real rows first.
  assert max(counts) - min(counts) <= 1  # Dealt round-robin.
  with pytest.raises(ConfigError):
    sampling.poisson_batch(_arrays(), 0.1, 96, secret, 3, num_blocks=5)


def test_shuffle_batches_are_fresh_uniform_subsets():
  secret = rng_lib.SecretStreams.fresh()

  def fn(s):
    return sampling.shuffle_batch(_arrays(), 50, secret, s)

  b0 = fn(0)
  assert len(set(b0["index"].tolist())) == 50 and b0["weight"].sum() == 50
  assert not np.array_equal(b0["index"], fn(1)["index"])
  counts = np.zeros(N)
  for s in range(200):
    counts[fn(s)["index"]] += 1
  # Each example is drawn with probability 0.1 per step: 20 expected in 200 steps.
  assert abs(counts.mean() - 20) < 1e-9 and counts.std() < 8
  with pytest.raises(ConfigError):
    sampling.shuffle_batch(_arrays(), N + 1, secret, 0)


def test_adaptive_geometric_update_closed_form():
  got = float(adaptive.geometric_update(2.0, 0.8, 0.5, 0.2))
  assert got == pytest.approx(2.0 * math.exp(-0.2 * 0.3), rel=1e-6)
  assert float(adaptive.geometric_update(1.0, 0.5, 0.5, 0.2)) == pytest.approx(1.0)
  assert adaptive.default_count_noise_multiplier(1000) == 50.0


def _privacy(**kw):
  base = dict(mechanism="edp_sgd", noise_multiplier=1.0, virtual_batch_size=64)
  base.update(kw)
  return privacy_config.default_privacy_config(**base)


@pytest.mark.parametrize(
  "kw,field",
  [
    (dict(noise_multiplier=-0.1), "noise_multiplier"),
    (dict(delta=0.0), "delta"),
    (dict(delta=1.0), "delta"),
    (dict(l2_clip_norm=0.0), "l2_clip_norm"),
    (dict(l2_clip_norm=-1.0), "l2_clip_norm"),
    (dict(l2_clip_norm="sometimes"), "l2_clip_norm"),
    (dict(target_epsilon=0.0), "target_epsilon"),
    (dict(target_epsilon=-3.0), "target_epsilon"),
    (dict(mechanism="dp_magic"), "mechanism"),
    (dict(virtual_batch_size=70), "virtual_batch_size"),
    (dict(noise_multiplier=None, target_epsilon=None), "noise_multiplier"),
    (dict(sampling="shuffle", accountant="pld"), "accountant"),
    (dict(clipping="per_weight"), "clipping"),
    (dict(bogus_field=1), "bogus_field"),
    (dict(skip_padding="yes"), "skip_padding"),
  ],
)
def test_bad_privacy_config_is_a_config_error(kw, field):
  with pytest.raises(ConfigError, match=field):
    privacy_config.validate_privacy(_privacy(**kw), physical_batch_size=32)


def test_sampling_rate_above_one_is_a_config_error():
  train = privacy_config.default_privacy_config()  # Any ConfigDict with batch_size works.
  train = type(train)({"batch_size": 32})
  with pytest.raises(ConfigError, match="virtual_batch_size=640 is invalid"):
    privacy_config.resolve(_privacy(virtual_batch_size=640), train, 600, lambda b: 10)


def test_resolve_calibrates_sigma_and_schedules():
  train = type(privacy_config.default_privacy_config())({"batch_size": 32})
  res = privacy_config.resolve(
    _privacy(
      noise_multiplier=None, target_epsilon=2.0, noise_schedule="exp_decay", noise_decay=0.8
    ),
    train,
    6400,
    lambda b: 300,
  )
  assert res.sampling_rate == 0.01 and res.batch_rows % 32 == 0 and res.num_steps == 300
  assert res.accounted_sigma(99) == res.noise_multiplier  # Poisson: z = σ.
  assert res.accounted_sigma(100) == pytest.approx(0.8 * res.noise_multiplier)
  shuffle = privacy_config.resolve(
    _privacy(noise_multiplier=None, target_epsilon=2.0, sampling="shuffle"),
    train,
    6400,
    lambda b: 300,
  )
  assert shuffle.accounted_sigma(0) == pytest.approx(shuffle.noise_multiplier / 2)  # Δ = 2C.
  adaptive_res = privacy_config.resolve(_privacy(l2_clip_norm="auto"), train, 6400, lambda b: 10)
  assert adaptive_res.adaptive and adaptive_res.count_noise_multiplier == 64 / 20
  assert adaptive_res.grad_sigma(0) > adaptive_res.accounted_sigma(0)
