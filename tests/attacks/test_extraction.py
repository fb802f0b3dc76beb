"""Canary extraction recovers a memorised secret and fails on a model that never saw it."""

import attacks_tiny_model
import jax
import numpy as np
import optax
import pytest

from tests.conftest import conv_dim_labels
from trustml.attacks import exposure, extraction
from trustml.core.validation import ConfigError

DIGITS = np.arange(4, 14, dtype=np.int32)  # ten "digit" tokens
PREFIX = np.array([14, 15, 16], np.int32)  # "my pin is"
SECRET = DIGITS[[4, 7, 1, 9]]
POSITIONS = np.arange(3, 7)


def _data(with_canary: bool, seed: int = 0):
  rng = np.random.default_rng(seed)
  n = 256
  tokens = np.concatenate(
    [rng.integers(17, 32, (n, 3)), rng.choice(DIGITS, (n, 4)), rng.integers(17, 32, (n, 1))], 1
  ).astype(np.int32)
  labels = rng.integers(1, 3, n).astype(np.int32)
  if with_canary:  # the canary "my pin is 4 7 1 9 <filler>" with label 0, repeated 16 times
    canary = np.r_[PREFIX, SECRET, 20].astype(np.int32)
    tokens = np.concatenate([tokens, np.tile(canary, (16, 1))])
    labels = np.r_[labels, np.zeros(16, np.int32)]
  return {
    "tokens": tokens,
    "mask": np.ones_like(tokens, bool),
    "label": labels,
    "weight": np.ones(len(labels), np.float32),
  }


def _train(data):
  model = attacks_tiny_model.tiny_model()
  params = model.init(jax.random.key(0), {k: v[:2] for k, v in data.items()})
  opt = optax.adam(1e-2)

  @jax.jit
  def fit(params):
    def step(carry, _):
      p, s = carry
      g = jax.grad(lambda p: model.per_example_loss(p, data).mean())(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (params, opt.init(params)), None, length=300)[0][0]

  return model, fit(params)


@pytest.fixture(scope="module")
def trained():
  return _train(_data(True)), _train(_data(False))


CFG = extraction.ExtractionConfig(num_restarts=16, num_steps=100, learning_rate=0.2)


def _extract(model, params, candidates):
  tokens = np.r_[PREFIX, np.zeros(4, np.int32), 20].astype(np.int32)
  return extraction.extract_secret(
    model,
    params,
    tokens,
    np.ones(8, bool),
    POSITIONS,
    0,
    SECRET,
    candidates=candidates,
    key=jax.random.key(1),
    config=CFG,
  )


def test_extraction_recovers_memorised_secret(trained):
  (model, params), _ = trained
  res = _extract(model, params, DIGITS)
  assert res.exact_match and res.rank == 1 and res.token_accuracy == 1.0
  res_full = _extract(model, params, np.arange(32))  # the whole vocabulary
  assert res_full.token_accuracy >= 0.75
  # and its exposure is the maximum, log2(10^4)
  space = exposure.SecretSpace(np.r_[PREFIX, SECRET, 20], np.ones(8, bool), POSITIONS, DIGITS, 0)
  _, exps = exposure.exact_exposure(model, params, space, [space.index_of(SECRET)])
  assert exps[0] > 12.0


def test_extraction_fails_without_the_canary(trained):
  _, (model, params) = trained
  res = _extract(model, params, DIGITS)
  assert not res.exact_match
  assert res.token_accuracy <= 0.5


def test_extraction_bad_input(trained):
  (model, params), _ = trained
  with pytest.raises(ConfigError):
    extraction.extract_secret(
      model,
      params,
      np.zeros(8, np.int32),
      np.ones(8, bool),
      [9],
      0,
      [4],
      candidates=DIGITS,
      key=jax.random.key(0),
      config=CFG,
    )
  with pytest.raises(ConfigError):
    extraction.ExtractionConfig(num_restarts=0).validate()
  with pytest.raises(ConfigError, match="refine_sweeps"):
    extraction.ExtractionConfig(refine_sweeps=-1).validate()


def test_refinement_climbs_from_a_poor_relaxation(trained):
  """One Adam step decodes near-random codes; exact coordinate ascent still reaches the secret."""
  (model, params), _ = trained
  tokens = np.r_[PREFIX, np.zeros(4, np.int32), 20].astype(np.int32)
  kw = dict(candidates=DIGITS, key=jax.random.key(3))
  results = {}
  for sweeps in (0, 2):
    cfg = extraction.ExtractionConfig(
      num_restarts=2, num_steps=1, learning_rate=1e-6, refine_sweeps=sweeps
    )
    results[sweeps] = extraction.extract_secret(
      model, params, tokens, np.ones(8, bool), POSITIONS, 0, SECRET, config=cfg, **kw
    )
  poor, refined = results[0], results[2]
  assert not poor.exact_match and not poor.relaxed_exact_match
  assert refined.exact_match and not refined.relaxed_exact_match
  # Accepted moves only increase the exact objective.
  assert refined.best_log_odds >= poor.best_log_odds


def test_search_on_a_cnn_compiles_to_library_convolutions():
  # The relaxed search's rolled scan body goes through core/conv_layout on XLA:CPU (without it
  # the objective's input-gradient convolution is b0f_0oi->b0f, a naive loop nest in the loop).
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU layout check")
  from trustml.models import registry

  cfg = registry.default_model_config("cnn")
  cfg.update(embed_dim=8, num_filters=4, kernel_sizes=(2, 3))
  model = registry.build_model(cfg, vocab_size=40, num_classes=3, max_len=8)
  tokens = np.arange(8, dtype=np.int32) + 4
  batch = {
    "tokens": tokens[None],
    "mask": np.ones((1, 8), bool),
    "label": np.zeros(1, np.int32),
    "weight": np.ones(1, np.float32),
  }
  params = model.init(jax.random.key(0), batch)
  ec = extraction.ExtractionConfig(num_restarts=2, num_steps=3, refine_sweeps=0)
  search = extraction._search_fn(model)
  args = (params, tokens, np.ones(8, bool), POSITIONS, DIGITS, 0, jax.random.key(1))
  hlo = search.lower(*args, ec).compile().as_text()
  labels = conv_dim_labels(hlo)
  assert labels and all(lab == "b0f_0io->b0f" for lab in labels), labels
