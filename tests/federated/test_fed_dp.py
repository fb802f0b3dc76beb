"""DP-FedAvg: sensitivity with unequal (capped) weights, noise scale, adaptive clipping, epsilon."""

import dp_accounting
import fed_tiny_model
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trustml.core.validation import ConfigError
from trustml.federated import algorithms, dp, packing

MODEL = fed_tiny_model.model()
PARAMS = MODEL.init(jax.random.key(0), None)
ARR = fed_tiny_model.arrays(300, seed=2)
SIZES = [2, 3, 5, 9, 14, 20, 30, 40]
ROWS = [np.arange(i * 35, i * 35 + n) for i, n in enumerate(SIZES)]
CLIP = 0.05
DENOM = 3.0


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def _round(alg, weights, key=0, clip_norm=None):
  p = packing.device_arrays(
    packing.pack(ARR, ROWS, batch_size=4, local_epochs=1, weights=weights, seed=1)
  )
  p["scalars"] = {"denominator": DENOM, "expected_clients": 4.0}
  state = alg.init(PARAMS)
  if clip_norm is not None:
    state = state._replace(l2_clip_norm=jnp.float32(clip_norm))
  new, diag = alg.apply(state, p, jax.random.key(key))
  return _flat(new.params) - _flat(PARAMS), diag


@pytest.fixture(scope="module")
def noiseless():
  return algorithms.fed_avg(
    MODEL, client_learning_rate=0.5, dp=dp.DpConfig(l2_clip_norm=CLIP, noise_multiplier=0.0)
  )


def test_sensitivity_with_unequal_capped_weights(noiseless):
  w = dp.capped_weights(np.array(SIZES), weight_cap=10.0)
  assert len(np.unique(w)) > 3 and w.max() == 1.0
  full, diag = _round(noiseless, w)
  assert float(diag["metrics"]["dp/unclipped_fraction"]) < 0.5  # clipping is active
  for j in range(len(SIZES)):
    wj = w.copy()
    wj[j] = 0.0  # remove user j
    removed, _ = _round(noiseless, wj)
    # Estimate = sum / fixed denominator: one user moves the sum by <= C (w_j <= 1, ||clip|| <= C).
    assert np.linalg.norm(full - removed) * DENOM <= CLIP * (1 + 1e-4)
  # Without the cap (w_j = n_j), one heavy user moves the sum by more than C.
  raw = np.array(SIZES, np.float32)
  full_raw, _ = _round(noiseless, raw)
  raw[-1] = 0.0
  removed_raw, _ = _round(noiseless, raw)
  assert np.linalg.norm(full_raw - removed_raw) * DENOM > 5 * CLIP


def test_noise_scale(noiseless):
  z = 2.0
  noisy = algorithms.fed_avg(
    MODEL, client_learning_rate=0.5, dp=dp.DpConfig(l2_clip_norm=CLIP, noise_multiplier=z)
  )
  w = dp.capped_weights(np.array(SIZES), weight_cap=10.0)
  clean, _ = _round(noiseless, w)
  samples = np.concatenate([_round(noisy, w, key=k)[0] - clean for k in range(8)])
  # 8 x 95 = 760 samples: relative standard error of the std ~2.6%; 15% is > 5 sigma.
  assert np.std(samples) == pytest.approx(z * CLIP / DENOM, rel=0.15)
  assert abs(np.mean(samples)) < 5 * z * CLIP / DENOM / np.sqrt(len(samples))


def test_per_layer_clip_bounds_each_leaf_and_total():
  tree = {"a": jnp.full((3,), 10.0), "b": jnp.full((2, 2), 0.01), "c": jnp.full((5,), -4.0)}
  clipped, norm = dp.clip(tree, 1.0, per_layer=True)
  assert float(norm) == pytest.approx(np.sqrt(300 + 4e-4 + 80), rel=1e-5)
  for leaf in jax.tree.leaves(clipped):
    assert float(jnp.linalg.norm(leaf)) <= 1 / np.sqrt(3) + 1e-6
  assert float(dp.global_norm(clipped)) <= 1.0 + 1e-6
  flat, _ = dp.clip(tree, 1.0, per_layer=False)
  assert float(dp.global_norm(flat)) == pytest.approx(1.0, rel=1e-5)


def test_adaptive_clip_moves_toward_target_quantile():
  cfg = dp.DpConfig(
    adaptive=True,
    target_quantile=0.5,
    clip_learning_rate=0.2,
    count_noise_multiplier=0.5,
    noise_multiplier=0.5,
  )
  gen = np.random.default_rng(0)
  m = 100
  # Direction: all norms below C -> C shrinks; all above -> C grows.
  down, _ = dp.adapt_clip(
    jnp.float32(1.0), jnp.float32(m), jax.random.key(0), expected_clients=m, config=cfg
  )
  up, _ = dp.adapt_clip(
    jnp.float32(1.0), jnp.float32(0), jax.random.key(1), expected_clients=m, config=cfg
  )
  assert float(down) < 1.0 < float(up)
  # Convergence: norms ~ LogNormal(0, 0.5), median 1; start far away from both sides.
  for c0 in (0.05, 20.0):
    c = jnp.float32(c0)
    for t in range(150):
      norms = gen.lognormal(0.0, 0.5, size=m)
      count = jnp.float32((norms <= float(c)).sum())
      c, _ = dp.adapt_clip(c, count, jax.random.key(100 + t), expected_clients=m, config=cfg)
    assert 0.7 < float(c) < 1.4


def test_adaptive_round_updates_clip(noiseless):
  del noiseless
  cfg = dp.DpConfig(
    l2_clip_norm=10.0, noise_multiplier=0.0, adaptive=True, count_noise_multiplier=0.01
  )
  alg = algorithms.fed_avg(MODEL, client_learning_rate=0.5, dp=cfg)
  p = packing.device_arrays(packing.pack(ARR, ROWS, batch_size=4, local_epochs=1, seed=1))
  p["scalars"] = {"denominator": 8.0, "expected_clients": 8.0}
  state, diag = alg.apply(alg.init(PARAMS), p, jax.random.key(0))
  assert float(diag["metrics"]["dp/unclipped_fraction"]) == 1.0  # clip 10 >> every norm
  assert float(state.l2_clip_norm) < 10.0


def test_noise_split_and_epsilon():
  cfg = dp.DpConfig(noise_multiplier=1.0, adaptive=True, count_noise_multiplier=5.0)
  z_delta = dp.update_noise_multiplier(cfg)
  assert z_delta**-2 + (2 * 5.0) ** -2 == pytest.approx(1.0)
  with pytest.raises(ConfigError, match="count_noise_multiplier"):
    dp.DpConfig(noise_multiplier=2.0, adaptive=True, count_noise_multiplier=0.9).validate()
  eps1 = dp.epsilon(noise_multiplier=1.0, sampling_rate=0.01, rounds=100, delta=1e-5)
  eps2 = dp.epsilon(noise_multiplier=1.0, sampling_rate=0.01, rounds=400, delta=1e-5)
  eps3 = dp.epsilon(noise_multiplier=2.0, sampling_rate=0.01, rounds=100, delta=1e-5)
  assert 0 < eps3 < eps1 < eps2
  # q = 1, one round is the plain Gaussian mechanism: below the classic RDP bound and above
  # the exact (PLD) value.
  g = dp.epsilon(noise_multiplier=1.0, sampling_rate=1.0, rounds=1, delta=1e-5)
  classic = min(a / 2 + np.log(1e5) / (a - 1) for a in np.linspace(1.01, 100, 5000))
  pld = dp_accounting.pld.PLDAccountant()
  pld.compose(dp_accounting.GaussianDpEvent(1.0))
  assert pld.get_epsilon(1e-5) <= g <= classic + 1e-6
  assert dp.epsilon(noise_multiplier=0.0, sampling_rate=0.1, rounds=1, delta=1e-5) == float("inf")
