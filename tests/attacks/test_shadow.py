"""Vmapped shadow training equals training each shadow model alone, on one or many devices."""

import pathlib
import textwrap

import attacks_tiny_model
import jax
import numpy as np
import optax
import pytest

from tests.conftest import run_on_fake_devices
from trustml.attacks import lira, shadow
from trustml.core.validation import ConfigError


def _pool(n=64, t=8, vocab=32, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "tokens": rng.integers(4, vocab, (n, t)).astype(np.int32),
    "mask": np.ones((n, t), bool),
    "label": rng.integers(0, classes, n).astype(np.int32),
    "weight": np.ones(n, np.float32),
  }


def test_vmapped_equals_individual():
  model = attacks_tiny_model.tiny_model()
  pool = _pool()
  masks = lira.shadow_masks(4, 64, seed=0)
  opt = optax.adam(1e-2)
  params, losses = shadow.train_shadow_models(
    model, opt, pool, masks, num_steps=10, batch_size=8, seed=5
  )
  assert losses.shape == (4, 10)
  for s in range(4):
    p1, l1 = shadow.train_one(model, opt, pool, masks, s, num_steps=10, batch_size=8, seed=5)
    np.testing.assert_allclose(np.asarray(losses[s]), np.asarray(l1), rtol=1e-4, atol=1e-5)
    jax.tree.map(
      lambda a, b, s=s: np.testing.assert_allclose(
        np.asarray(a[s]), np.asarray(b), rtol=1e-4, atol=1e-5
      ),
      params,
      p1,
    )
  # Different models really differ (different data and init).
  assert not np.allclose(np.asarray(losses[0]), np.asarray(losses[1]))
  # Each model only ever sees its IN rows.
  idx = shadow.batch_indices(masks, 10, 8, seed=5)
  for s in range(4):
    assert masks[s][idx[s]].all()
  st = shadow.shadow_statistics(model, params, pool, batch_size=40)
  assert st.shape == (4, 64) and np.all(np.isfinite(st))


def test_bad_shadow_inputs():
  model = attacks_tiny_model.tiny_model()
  pool = _pool()
  with pytest.raises(ConfigError, match="num_shadow_models"):
    shadow.train_shadow_models(
      model, optax.sgd(0.1), pool, np.ones((1, 64), bool), num_steps=1, batch_size=2, seed=0
    )
  with pytest.raises(ConfigError, match="pool"):
    shadow.train_shadow_models(
      model, optax.sgd(0.1), pool, np.ones((2, 10), bool), num_steps=1, batch_size=2, seed=0
    )


SHARDED_SCRIPT = textwrap.dedent(
  """
  import os, sys
  sys.path.insert(0, os.environ["TEST_DIR"])
  import jax, numpy as np, optax
  assert jax.device_count() == 4, jax.devices()
  import attacks_tiny_model
  from test_shadow import _pool
  from trustml.attacks import lira, shadow
  from trustml.core.validation import ConfigError

  model = attacks_tiny_model.tiny_model()
  pool = _pool()
  masks = lira.shadow_masks(8, 64, seed=0)
  kw = dict(num_steps=9, batch_size=8, seed=5)
  opt = optax.adam(1e-2)
  p0, l0 = shadow.train_shadow_models(model, opt, pool, masks, **kw)
  mesh = shadow.make_mesh()
  p1, l1 = shadow.train_shadow_models(model, opt, pool, masks, mesh=mesh, **kw)
  assert l1.sharding.spec[0] == "models", l1.sharding
  assert len(l1.sharding.device_set) == 4
  np.testing.assert_allclose(np.asarray(l0), np.asarray(l1), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  try:
    shadow.train_shadow_models(model, opt, pool, masks[:6], mesh=mesh, **kw)
    raise SystemExit("6 models on 4 devices should fail")
  except ConfigError as e:
    assert "multiple of the mesh size" in str(e), e
  print("OK")
  """
)


@pytest.mark.subprocess
def test_sharded_over_devices_equals_one_device():
  """S = 8 shadow models split over 4 fake CPU devices == all 8 on one device."""
  run_on_fake_devices(SHARDED_SCRIPT, pathlib.Path(__file__).resolve().parent)
