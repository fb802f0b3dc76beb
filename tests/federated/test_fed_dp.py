"""DP-FedAvg on the privacy core: sensitivity measured on neighbouring cohorts, noise, adaptive count."""

import fed_tiny_model
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trustml.core import rng as rng_lib
from trustml.core.validation import ConfigError
from trustml.federated import algorithms, dp, packing
from trustml.privacy import accounting

MODEL = fed_tiny_model.model()
PARAMS = MODEL.init(jax.random.key(0), None)
ARR = fed_tiny_model.arrays(300, seed=2)
SIZES = [2, 3, 5, 9, 14, 20, 30, 40]
ROWS = [np.arange(i * 35, i * 35 + n) for i, n in enumerate(SIZES)]
CLIP = 0.05
DENOM = 3.0


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def _round(alg, weights, key=0, clip_norm=None, secret=None):
  p = packing.device_arrays(
    packing.pack(ARR, ROWS, batch_size=4, local_epochs=1, weights=weights, seed=1)
  )
  p["scalars"] = {"denominator": DENOM, "expected_clients": 4.0}
  secret = secret or rng_lib.SecretStreams.from_seed(key)
  state = alg.init(PARAMS, secret.key_data("fed_dp_noise"))
  if clip_norm is not None:
    state = state._replace(l2_clip_norm=jnp.float32(clip_norm))
  new, diag = alg.apply(state, p, jax.random.key(0))
  return _flat(new.params) - _flat(PARAMS), diag


@pytest.fixture(scope="module")
def noiseless():
  return algorithms.fed_avg(
    MODEL, client_learning_rate=0.5, dp=dp.DpConfig(l2_clip_norm=CLIP, noise_multiplier=0.0)
  )


def test_sensitivity_with_unequal_capped_weights(noiseless):
  # Add/remove one user (weight 0 = absent), noise off: the released sum moves by <= C.
  w = dp.capped_weights(np.array(SIZES), weight_cap=10.0)
  assert len(np.unique(w)) > 3 and w.max() == 1.0
  full, diag = _round(noiseless, w)
  assert float(diag["metrics"]["unsafe/unclipped_fraction"]) < 0.5  # clipping is active
  assert dp.aggregator(dp.DpConfig()).sensitivity(CLIP) == CLIP
  for j in range(len(SIZES)):
    wj = w.copy()
    wj[j] = 0.0  # remove user j
    removed, _ = _round(noiseless, wj)
    # Estimate = sum / fixed denominator: one user moves the sum by <= C (w_j <= 1, ||clip|| <= C).
    assert np.linalg.norm(full - removed) * DENOM <= CLIP * (1 + 1e-4)
  # Uncapped weights (w_j = n_j > 1) cannot break the bound: the core clamps scales into [0, 1].
  raw = np.array(SIZES, np.float32)
  full_raw, _ = _round(noiseless, raw)
  raw[-1] = 0.0
  removed_raw, _ = _round(noiseless, raw)
  assert np.linalg.norm(full_raw - removed_raw) * DENOM <= CLIP * (1 + 1e-4)


def test_replace_one_user_sensitivity_is_two_c():
  # Fixed-size cohorts: replace one user's data by another's; the sum moves by up to 2C, and
  # the aggregator declares 2C (so the ledger accounts z/2: audit A1 for DP-FedAvg).
  cfg = dp.DpConfig(l2_clip_norm=CLIP, noise_multiplier=0.0, cohort_mode="without_replacement")
  alg = algorithms.fed_avg(MODEL, client_learning_rate=0.5, dp=cfg)
  assert dp.aggregator(cfg).sensitivity(CLIP) == 2 * CLIP
  w = np.ones(len(SIZES), np.float32)
  base, _ = _round(alg, w)
  worst = 0.0
  for j in range(len(SIZES)):
    rows = list(ROWS)
    rows[j] = 299 - np.arange(SIZES[j])  # Another user's rows (labels and tokens differ).
    p = packing.device_arrays(
      packing.pack(ARR, rows, batch_size=4, local_epochs=1, weights=w, seed=1)
    )
    p["scalars"] = {"denominator": DENOM, "expected_clients": 4.0}
    state = alg.init(PARAMS, rng_lib.SecretStreams.from_seed(0).key_data("fed_dp_noise"))
    new, _ = alg.apply(state, p, jax.random.key(0))
    worst = max(worst, np.linalg.norm(_flat(new.params) - _flat(PARAMS) - base) * DENOM)
  assert CLIP < worst <= 2 * CLIP * (1 + 1e-4)


def test_noise_scale_and_secret_key(noiseless):
  z = 2.0
  noisy = algorithms.fed_avg(
    MODEL, client_learning_rate=0.5, dp=dp.DpConfig(l2_clip_norm=CLIP, noise_multiplier=z)
  )
  w = dp.capped_weights(np.array(SIZES), weight_cap=10.0)
  clean, _ = _round(noiseless, w)
  samples = np.concatenate(
    [_round(noisy, w, secret=rng_lib.SecretStreams.fresh())[0] - clean for _ in range(8)]
  )
  # 8 x 95 = 760 samples: relative standard error of the std ~2.6%; 15% is > 5 sigma.
  assert np.std(samples) == pytest.approx(z * CLIP / DENOM, rel=0.15)
  assert abs(np.mean(samples)) < 5 * z * CLIP / DENOM / np.sqrt(len(samples))
  # The round key (derived from the public seed) does not determine the noise: the secret does.
  a = _round(noisy, w, secret=rng_lib.SecretStreams.from_seed(1))[0]
  b = _round(noisy, w, secret=rng_lib.SecretStreams.from_seed(2))[0]
  assert not np.allclose(a, b)
  with pytest.raises(ValueError, match="dp_key_data"):
    noisy.init(PARAMS)


def test_per_layer_clip_bounds_each_leaf_and_total():
  from trustml.privacy import clipping

  tree = {"a": jnp.full((1, 3), 10.0), "b": jnp.full((1, 2, 2), 0.01), "c": jnp.full((1, 5), -4.0)}
  clipped, _ = clipping.clipped_sum(tree, 1.0, jnp.ones(1), "per_layer")
  for leaf in jax.tree.leaves(clipped):
    assert float(jnp.linalg.norm(leaf)) <= 1 / np.sqrt(3) + 1e-6
  total = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(clipped)))
  assert total <= 1.0 + 1e-6
  flat, _ = clipping.clipped_sum(tree, 1.0, jnp.ones(1), "flat")
  assert np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(flat))) == pytest.approx(
    1.0, rel=1e-5
  )


def test_adaptive_count_is_centred_with_sensitivity_one_half():
  # Audit A2: the released count must be centred (sensitivity ½), as the noise split assumes.
  cfg = dp.DpConfig(
    l2_clip_norm=10.0, noise_multiplier=0.0, adaptive=True, count_noise_multiplier=1e-6
  )
  alg = algorithms.fed_avg(MODEL, client_learning_rate=0.5, dp=cfg)
  assert dp.aggregator(cfg).count_sensitivity() == 0.5
  for weights in (np.ones(8, np.float32), np.r_[np.ones(7), 0.0].astype(np.float32)):
    p = packing.device_arrays(
      packing.pack(ARR, ROWS, batch_size=4, local_epochs=1, weights=weights, seed=1)
    )
    p["scalars"] = {"denominator": 8.0, "expected_clients": 8.0}
    state = alg.init(PARAMS, rng_lib.SecretStreams.from_seed(0).key_data("fed_dp_noise"))
    state, diag = alg.apply(state, p, jax.random.key(0))
    n = float(weights.sum())
    # b~ = (sum(b_i - 1/2) + noise) / 8 + 1/2, every client unclipped (C = 10).
    frac = float(diag["metrics"]["dp/noisy_unclipped_fraction"])
    assert frac == pytest.approx((n - 0.5 * n) / 8.0 + 0.5, abs=1e-5)
    assert float(state.l2_clip_norm) < 10.0
  # Removing one user moves the released centred count by exactly ½.


def test_adaptive_clip_converges_to_target_quantile():
  from trustml.privacy import adaptive, aggregators

  agg = aggregators.ClippedAggregator(unit="user", relation="add_or_remove_one")
  gen = np.random.default_rng(0)
  m = 100
  for c0 in (0.05, 20.0):
    c = 1.0 * c0
    for t in range(150):
      norms = gen.lognormal(0.0, 0.5, size=m)
      stats = {
        "num_examples": float(m),
        "num_nonfinite": 0.0,
        "num_unclipped": float((norms <= c).sum()),
      }
      state = (
        __import__("trustml.privacy.noise", fromlist=["x"])
        .gaussian_privatizer(rng_lib.SecretStreams.from_seed(t).key_data("n"))
        .init(None)
      )
      frac = adaptive.noisy_unclipped_fraction(agg, stats, 0.5, m, state)
      c = float(adaptive.geometric_update(c, frac, 0.5, 0.2))
    assert 0.7 < c < 1.4


def test_noise_split_and_accounting():
  cfg = dp.DpConfig(noise_multiplier=1.0, adaptive=True, count_noise_multiplier=5.0)
  z_delta = dp.update_noise_multiplier(cfg)
  assert z_delta**-2 + (2 * 5.0) ** -2 == pytest.approx(1.0)
  with pytest.raises(ConfigError, match="count_noise_multiplier"):
    dp.DpConfig(noise_multiplier=2.0, adaptive=True, count_noise_multiplier=0.9).validate()
  with pytest.raises(ConfigError, match="sampler"):
    dp.validate_selection(dp.DpConfig(), "activity", "without_replacement")
  with pytest.raises(ConfigError, match="accountant"):
    dp.validate_selection(dp.DpConfig(accountant="pld"), "uniform", "without_replacement")
  # Audit s11: a fixed cohort of 20 of 605 users, 60 rounds, z = 1 is accounted with z/2.
  ev = accounting.run_event(
    [(0.5, 60)], sampling="fixed", sampling_rate=20 / 605, dataset_size=605, batch_size=20
  )
  eps = accounting.epsilon(ev, 1e-5, sampling="fixed")
  assert eps == pytest.approx(16.9, abs=0.1)


def test_aggregator_init_apply_on_stacked_deltas():
  # FedJAX-style (init, apply): clipped weighted sum over the fixed denominator, noise off.
  agg = dp.DpFedAvgAggregator(dp.DpConfig(l2_clip_norm=1.0, noise_multiplier=0.0))
  state = agg.init(rng_lib.SecretStreams.from_seed(0).key_data("fed_dp_noise"))
  deltas = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4], [100.0, 0.0]])}
  weights = jnp.array([1.0, 0.5, 0.0])  # The third client is padding.
  mean, new_state, aux = agg.apply(deltas, weights, state, 2.0, 2.0)
  expected = (np.array([0.6, 0.8]) + 0.5 * np.array([0.3, 0.4])) / 2.0
  np.testing.assert_allclose(np.asarray(mean["w"]), expected, rtol=1e-6)
  assert float(aux["dp/sensitivity"]) == 1.0 and int(new_state.privatizer.count) == 1
