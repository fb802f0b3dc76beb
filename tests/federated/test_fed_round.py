"""The round: FedAvg one-client-one-step == SGD, FedProx(mu=0) == FedAvg, vmapped == reference."""

import fed_tiny_model
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import conv_dim_labels
from trustml.core.validation import ConfigError
from trustml.federated import algorithms, packing

MODEL = fed_tiny_model.model()
PARAMS = MODEL.init(jax.random.key(0), None)
ARR = fed_tiny_model.arrays(300, seed=1)
ROWS = [np.arange(i * 20, i * 20 + 2 + 3 * i) for i in range(6)]
AVG = algorithms.fed_avg(MODEL, client_learning_rate=0.3)  # shared: one compile per shape


def _packed(**kw):
  return packing.device_arrays(packing.pack(ARR, ROWS, batch_size=4, local_epochs=2, seed=0, **kw))


def _max_diff(a, b):
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def test_fedavg_one_client_one_step_is_sgd():
  alg = AVG
  rows = [np.arange(5)]
  p = packing.device_arrays(packing.pack(ARR, rows, batch_size=5, local_epochs=1))
  state, _ = alg.apply(alg.init(PARAMS), p, jax.random.key(0))
  batch = {k: jnp.asarray(ARR[k][:5]) for k in ("tokens", "mask", "label", "weight")}
  grads = jax.grad(lambda w: jnp.mean(MODEL.per_example_loss(w, batch)))(PARAMS)
  expected = jax.tree.map(lambda w, g: w - 0.3 * g, PARAMS, grads)
  assert _max_diff(state.params, expected) < 1e-6
  assert int(state.round) == 1


def test_fedprox_mu0_equals_fedavg_and_mu_shrinks_delta():
  p = _packed(client_multiple=4)
  avg = AVG
  prox0 = algorithms.fed_prox(MODEL, client_learning_rate=0.3, proximal_mu=0.0)
  prox = algorithms.fed_prox(MODEL, client_learning_rate=0.3, proximal_mu=1.0)
  a, da = avg.apply(avg.init(PARAMS), p, jax.random.key(1))
  b, _ = prox0.apply(prox0.init(PARAMS), p, jax.random.key(1))
  _, dc = prox.apply(prox.init(PARAMS), p, jax.random.key(1))
  assert _max_diff(a.params, b.params) < 1e-7
  assert float(dc["metrics"]["fed/delta_norm"]) < float(da["metrics"]["fed/delta_norm"])


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "scaffold"])
def test_vmapped_equals_reference(name):
  cfg = {
    "name": name,
    "client_learning_rate": 0.3,
    "server_learning_rate": 0.05 if name == "fedadam" else 1.0,
    "proximal_mu": 0.2,
  }
  alg = AVG if name == "fedavg" else algorithms.from_config(MODEL, cfg)
  p = _packed(client_multiple=4)  # 6 clients padded to 8: zero-weight padding clients
  if name == "scaffold":
    gen = np.random.default_rng(0)
    p["control"] = jax.tree.map(
      lambda x: jnp.asarray(0.05 * gen.normal(size=(8,) + x.shape), jnp.float32), PARAMS
    )
    p["scalars"] = {"control_scale": 1 / 6}
  fast, dfast = alg.apply(alg.init(PARAMS), p, jax.random.key(2))
  ref, dref = alg.reference_apply(alg.init(PARAMS), p, jax.random.key(2))
  assert _max_diff(fast, ref) < 2e-6
  np.testing.assert_allclose(
    dfast["clients"]["loss"], dref["clients"]["loss"], rtol=1e-5, atol=1e-6
  )
  # A second round from the new state (adam/scaffold state carried).
  fast2, _ = alg.apply(fast, p, jax.random.key(3))
  ref2, _ = alg.reference_apply(ref, p, jax.random.key(3))
  assert _max_diff(fast2, ref2) < 5e-6
  if name == "scaffold":
    assert _max_diff(dfast["clients"]["control"], dref["clients"]["control"]) < 2e-5


def test_padding_clients_change_nothing():
  alg = AVG
  a, _ = alg.apply(alg.init(PARAMS), _packed(), jax.random.key(4))
  b, d = alg.apply(alg.init(PARAMS), _packed(client_multiple=4), jax.random.key(4))
  assert _max_diff(a.params, b.params) < 1e-6
  assert float(d["metrics"]["fed/num_clients"]) == 6


def test_uniform_weighting_is_mean_of_single_client_deltas():
  alg = AVG
  p = _packed(client_multiple=4)
  pu = dict(p, weight=np.where(p["weight"] > 0, 1.0, 0.0).astype(np.float32))
  a, _ = alg.apply(alg.init(PARAMS), pu, jax.random.key(5))
  # Oracle: uniform mean of each single-client round's delta.
  deltas = []
  for c in range(len(ROWS)):
    # Client c alone (the other slots zero-weight): same shape, no recompile.
    single = dict(pu, weight=np.where(np.arange(8) == c, 1.0, 0.0).astype(np.float32))
    s, _ = alg.apply(alg.init(PARAMS), single, jax.random.key(5))
    deltas.append(jax.tree.map(jnp.subtract, s.params, PARAMS))
  expected = jax.tree.map(lambda w, *ds: w + sum(ds) / len(ds), PARAMS, *deltas)
  assert _max_diff(a.params, expected) < 1e-6


def test_bad_algorithm_names():
  with pytest.raises(ConfigError, match="algorithm.name"):
    algorithms.from_config(
      MODEL, {"name": "fedbogus", "client_learning_rate": 0.1, "server_learning_rate": 1.0}
    )
  with pytest.raises(ConfigError, match="server_optimizer"):
    algorithms.server_optimizer("sgdx", 1.0)
  with pytest.raises(ConfigError, match="client_learning_rate"):
    algorithms.fed_avg(MODEL, client_learning_rate=0.0)


def test_cnn_round_equals_reference_and_compiles_to_library_convolutions():
  # The clients' local-training scan body goes through core/conv_layout on XLA:CPU: without it
  # the backward's input-gradient convolution is emitted as b0f_0oi->b0f, a naive loop nest
  # inside the while body (FedAvg, 16 CNN clients x 4 steps x 16 rows: 2.3 s vs 92 ms a round).
  from trustml.models import registry

  cfg = registry.default_model_config("cnn")
  cfg.update(embed_dim=8, num_filters=4, kernel_sizes=(2, 3))
  model = registry.build_model(cfg, vocab_size=40, num_classes=3, max_len=6)
  gen = np.random.default_rng(5)
  n = 24
  arr = {
    "tokens": gen.integers(1, 40, (n, 6)).astype(np.int32),
    "mask": np.arange(6)[None] < gen.integers(2, 7, n)[:, None],
    "label": gen.integers(0, 3, n).astype(np.int32),
    "weight": np.ones(n, np.float32),
  }
  rows = [np.arange(0, 7), np.arange(7, 15), np.arange(15, 24)]
  p = packing.device_arrays(packing.pack(arr, rows, batch_size=3, local_epochs=1, seed=0))
  params = model.init(jax.random.key(0), {k: v[:2] for k, v in arr.items()})
  alg = algorithms.fed_avg(model, client_learning_rate=0.3)
  ref, _ = alg.reference_apply(alg.init(params), p, jax.random.key(1))
  fast, _ = alg.apply(alg.init(params), p, jax.random.key(1))
  assert _max_diff(fast.params, ref.params) < 2e-6
  if jax.default_backend() != "cpu":
    return
  hlo = jax.jit(alg.apply).lower(alg.init(params), p, jax.random.key(1)).compile().as_text()
  labels = conv_dim_labels(hlo)
  assert labels and all(lab == "b0f_0io->b0f" for lab in labels), labels
