"""Server optimizers against a float64 NumPy transcription of Reddi et al. 2021, Alg. 2.

JAX runs in float32 here (no global x64 switch in a shared pytest process): rtol 1e-5.
"""

import fed_tiny_model
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trustml.core.validation import ConfigError
from trustml.federated import algorithms, server_optimizers


def _alg2(deltas, variant, *, eta, b1, b2, tau, v0):
  """x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau) over a list of mean client deltas."""
  x = np.zeros_like(deltas[0])
  m = np.zeros_like(x)
  v = np.full_like(x, v0)
  for d in deltas:
    m = b1 * m + (1 - b1) * d
    if variant == "adagrad":
      v = v + d**2
    elif variant == "adam":
      v = b2 * v + (1 - b2) * d**2
    else:
      v = v - (1 - b2) * d**2 * np.sign(v - d**2)
    x = x + eta * m / (np.sqrt(v) + tau)
  return x


def _run(opt, deltas):
  params = {"w": jnp.zeros(deltas[0].shape, jnp.float32)}
  state = opt.init(params)
  for d in deltas:
    pseudo_grad = {"w": -jnp.asarray(d, jnp.float32)}  # what the round feeds the server optimizer
    upd, state = opt.update(pseudo_grad, state, params)
    params = optax.apply_updates(params, upd)
  return np.asarray(params["w"])


@pytest.mark.parametrize("variant", server_optimizers.REDDI_VARIANTS)
@pytest.mark.parametrize("b1", [0.0, 0.9])
def test_matches_algorithm_2(variant, b1):
  gen = np.random.default_rng(0)
  deltas = [gen.normal(scale=10.0 ** gen.uniform(-4, -1), size=7) for _ in range(12)]
  tau, eta = 1e-3, 0.05
  got = _run(server_optimizers.reddi(variant, eta, b1=b1, b2=0.99, tau=tau), deltas)
  want = _alg2(deltas, variant, eta=eta, b1=b1, b2=0.99, tau=tau, v0=tau**2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_audit_b3_tau_outside_the_root():
  """ff_repro_fedadagrad_eps: |Δ| = 1e-3, τ = 1e-3, β1 = 0.

  Reddi: η Δ / (sqrt(v) + τ) = 0.5 with v_{-1} = 0, and 1e-3 / (sqrt(2e-6) + 1e-3) = 0.4142
  with the default v_{-1} = τ²; optax.adagrad's eps inside the root gave 1e-3 / sqrt(1.001e-3)
  = 0.0316 (16x smaller).
  """
  g = {"w": jnp.full(3, -1e-3)}
  opt = algorithms.server_optimizer("adagrad", 1.0)
  u, _ = opt.update(g, opt.init(g), g)
  assert float(u["w"][0]) == pytest.approx(1e-3 / (np.sqrt(2e-6) + 1e-3), rel=1e-5)
  opt0 = algorithms.server_optimizer("adagrad", 1.0, initial_accumulator=0.0)
  u0, _ = opt0.update(g, opt0.init(g), g)
  assert float(u0["w"][0]) == pytest.approx(0.5, rel=1e-5)
  old = algorithms.server_optimizer("optax_adagrad", 1.0)
  uo, _ = old.update(g, old.init(g), g)
  assert float(uo["w"][0]) == pytest.approx(1e-3 / np.sqrt(1e-6 + 1e-3), rel=1e-6)


def test_no_bias_correction_unlike_optax_adam():
  """First FedAdam step: m = 0.1 Δ, v = 0.99 τ² + 0.01 Δ² (no 1/(1-β^t) factors)."""
  g = {"w": jnp.full(2, -0.02)}
  ours = algorithms.server_optimizer("adam", 1.0)
  u, _ = ours.update(g, ours.init(g), g)
  expected = 0.1 * 0.02 / (np.sqrt(0.99 * 1e-6 + 0.01 * 0.02**2) + 1e-3)
  assert float(u["w"][0]) == pytest.approx(expected, rel=1e-5)
  theirs = algorithms.server_optimizer("optax_adam", 1.0)
  ut, _ = theirs.update(g, theirs.init(g), g)
  assert float(ut["w"][0]) == pytest.approx(0.02 / (0.02 + 1e-3), rel=1e-6)  # bias corrected


def test_from_config_uses_reddi_and_validates():
  cfg = {
    "name": "fedadagrad",
    "client_learning_rate": 0.1,
    "server_learning_rate": 0.01,
    "server_tau": 1e-2,
  }
  alg = algorithms.from_config(fed_tiny_model.model(), cfg)
  assert alg is not None
  with pytest.raises(ConfigError, match="algorithm.server_tau"):
    algorithms.validate_algorithm(dict(cfg, server_tau=0.0))
  with pytest.raises(ConfigError, match="algorithm.server_b1"):
    algorithms.validate_algorithm(dict(cfg, server_b1=1.0))
  with pytest.raises(ConfigError, match="algorithm.server_optimizer"):
    server_optimizers.scale_by_reddi("rmsprop", b1=0.9, b2=0.99, tau=1e-3)
