"""Sharded over 4 fake CPU devices == unsharded (own process: XLA_FLAGS).

The unsharded round is checked against the Python reference backend in test_fed_round.py.
"""

import pathlib
import textwrap

import pytest

from tests.conftest import run_on_fake_devices

SCRIPT = textwrap.dedent(
  """
  import os, sys
  sys.path.insert(0, os.environ["TEST_DIR"])
  import jax, jax.numpy as jnp, numpy as np
  assert jax.device_count() == 4, jax.devices()
  import fed_tiny_model
  from trustml.federated import algorithms, dp, packing
  from trustml.federated import round as round_lib

  model = fed_tiny_model.model()
  params = model.init(jax.random.key(0), None)
  arr = fed_tiny_model.arrays(300, seed=3)
  rows = [np.arange(i * 40, i * 40 + 3 + 4 * i) for i in range(6)]
  mesh = round_lib.make_mesh()
  def diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  out = []
  dpc = dp.DpConfig(l2_clip_norm=0.05, noise_multiplier=1.0, adaptive=True, count_noise_multiplier=2.0)
  for name, kw in (("fedavg", {}), ("dp", {"dp": dpc})):
    p = packing.device_arrays(packing.pack(arr, rows, batch_size=4, local_epochs=2, client_multiple=4))
    p["scalars"] = {"denominator": 4.0, "expected_clients": 6.0}
    plain = algorithms.fed_avg(model, client_learning_rate=0.3, **kw)
    sharded = algorithms.fed_avg(model, client_learning_rate=0.3, mesh=mesh, **kw)
    init = (lambda alg: alg.init(params, np.array([3, 4], np.uint32))) if "dp" in kw else (lambda alg: alg.init(params))
    a, _ = plain.apply(init(plain), p, jax.random.key(1))
    b, db = sharded.apply(init(sharded), round_lib.shard_packed(p, mesh), jax.random.key(1))
    assert db["clients"]["loss"].sharding.spec[0] == "clients", db["clients"]["loss"].sharding
    out.append((name, diff(a, b)))
  print("RESULT", out)
  for name, d_shard in out:
    assert d_shard < 1e-6, (name, d_shard)
  print("OK")
  """
)


@pytest.mark.subprocess
def test_sharded_equals_unsharded():
  run_on_fake_devices(SCRIPT, pathlib.Path(__file__).resolve().parent)
