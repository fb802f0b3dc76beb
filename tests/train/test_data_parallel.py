"""Data-parallel training on 4 fake CPU devices == 1 device (own process: XLA_FLAGS).

Oracles: the 1-device run of the same config (non-private, FSDP and DP-SGD: ε identical, eval
loss and parameters within 1e-5 relative); bit-identical replicas; and the closed form of the
DP noise: with every example's weight 0 the update is N(0, σ²C²)/L per coordinate, so the
standardised update has standard deviation 1 (it would be 2 if each of the 4 devices drew its
own noise and the draws were summed, 4 if one draw were summed 4 times). With the smoke
model's 5,100 coordinates the sample standard deviation has standard error 1/sqrt(2·5100) ≈
0.0099, so the 0.05 tolerance fails by chance with probability ≈ 4e-7 (and the seed is fixed).
"""

import pathlib
import textwrap

import pytest

from tests.conftest import run_on_fake_devices

SCRIPT = textwrap.dedent(
  """
  import tempfile
  import jax, numpy as np
  assert jax.device_count() == 4, jax.devices()
  from configs import dp_nlu, nlu
  from trustml.core import devices
  from trustml.core import rng as rng_lib
  from trustml.privacy import sampling, training
  from trustml.train import experiment, loop

  # The DP sampler's cap must be a multiple of devices x physical batch (4 x 16): the same
  # cap in both runs, so both see the same padded batches.
  orig_cap = sampling.poisson_cap
  sampling.poisson_cap = lambda n, q, p, s, b: -(-orig_cap(n, q, p, s, b) // 64) * 64
  devices.FSDP_MIN_SIZE = 64  # So the smoke model's tables are split under FSDP.
  tmp = tempfile.mkdtemp()

  def mesh(c, n, fsdp=False):
    c = c.copy_and_resolve_references()
    c.mesh = {"num_devices": n, "model": 1, "fsdp": fsdp}
    if "noise_seed" in c.privacy:  # The same DP noise and Poisson coins in both runs.
      c.privacy.noise_seed = 0
    return c

  def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)

  def max_rel(p, q):
    out = 0.0
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
      x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
      out = max(out, float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(y))), 1e-12)))
    return out

  # 1. Non-private: 4 devices (replicated state, then FSDP) == 1 device.
  base = nlu.get_config("smoke")
  one = loop.fit(mesh(base, 1), tmp + "/np1")
  four = loop.fit(mesh(base, 4), tmp + "/np4")
  fsdp = loop.fit(mesh(base, 4, fsdp=True), tmp + "/np4f")
  assert four.summary["train/num_devices"] == 4
  for out in (four, fsdp):
    assert rel(out.summary["eval/loss"], one.summary["eval/loss"]) < 1e-5, out.summary
    assert max_rel(out.state.params, one.state.params) < 1e-5
  fsdp_shardings = devices.state_shardings(four.state.params, devices.make_mesh(4), fsdp=True)
  split = [s.spec for s in jax.tree.leaves(fsdp_shardings)]
  assert any("data" in tuple(s) for s in split), split
  print("non-private ok", one.summary["eval/loss"], four.summary["eval/loss"])

  # 2. DP (eDP-SGD, Poisson): ε identical, final eval loss within 1e-5.
  dp = dp_nlu.get_config("smoke")
  s1 = training.run(mesh(dp, 1), tmp + "/dp1")
  s4 = training.run(mesh(dp, 4), tmp + "/dp4")
  assert s1["privacy/epsilon"] == s4["privacy/epsilon"], (s1, s4)
  assert rel(s4["eval/loss"], s1["eval/loss"]) < 1e-5, (s1["eval/loss"], s4["eval/loss"])
  assert s4["eval/accuracy"] == s1["eval/accuracy"]
  print("dp ok", s1["privacy/epsilon"], s1["eval/loss"], s4["eval/loss"])

  # 3. One noise draw per logical batch, the same on every replica.
  def noise_run(n):
    c = mesh(dp, n)
    c.privacy.noise_multiplier = 2.0
    c.privacy.target_epsilon = None
    c.train.optimizer, c.train.learning_rate = "sgd", 1.0
    c.train.schedule, c.train.warmup_steps = "constant", 0
    c.train.num_steps = 1
    if "dropout_rate" in c.model:
      c.model.dropout_rate = 0.0
    prepared = experiment.prepare(c, tmp + f"/noise{n}")
    built = training.build(c, prepared)
    grad_fn, batch_fn, led = built[1], built[2], built[3]
    def zero_batch_fn(step):
      b = dict(batch_fn(step))
      b["weight"] = np.zeros_like(b["weight"])
      return b
    cfg = c.copy_and_resolve_references()
    out = loop.fit(cfg, tmp + f"/noise{n}", prepared=prepared, grad_fn=grad_fn,
                   batch_fn=zero_batch_fn, ledger=led)
    init = prepared.model.init(rng_lib.RngStreams(int(c.seed)).stream("params"), zero_batch_fn(0))
    return out.state.params, init, built[0]

  q1, init1, res = noise_run(1)
  q4, init4, _ = noise_run(4)
  for leaf in jax.tree.leaves(q4):
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert len(shards) == 4 and all(np.array_equal(shards[0], s) for s in shards), "replicas differ"
  d1 = np.concatenate([np.ravel(np.asarray(a) - np.asarray(b)) for a, b in zip(jax.tree.leaves(q1), jax.tree.leaves(init1))])
  d4 = np.concatenate([np.ravel(np.asarray(a) - np.asarray(b)) for a, b in zip(jax.tree.leaves(q4), jax.tree.leaves(init4))])
  np.testing.assert_allclose(d4, d1, rtol=1e-6, atol=1e-7)
  z = -d4 * res.logical_batch_size / (2.0 * res.l2_clip_norm)
  assert z.size >= 5_000, z.size
  print("noise std", float(z.std()), z.size)
  assert abs(float(z.std()) - 1.0) < 0.05, float(z.std())
  print("OK")
  """
)


@pytest.mark.slow
@pytest.mark.subprocess
def test_four_devices_equal_one_device(repo_root):
  run_on_fake_devices(SCRIPT, pathlib.Path(__file__).resolve().parent)
