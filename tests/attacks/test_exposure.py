"""Exposure: exact ranks on a model whose loss ordering is known in closed form."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from trustml.attacks import exposure
from trustml.core.validation import ConfigError
from trustml.models import contract


def _table_model() -> contract.Model:
  """loss(tokens) = Σ_t w[t, tokens[t]] · mask[t]: the ordering of any filling is known."""

  def per_example_loss(params, batch, rng=None):
    del rng
    t = jnp.arange(batch["tokens"].shape[1])
    vals = params["w"][t[None, :], batch["tokens"]]
    return (vals * batch["mask"]).sum(-1) * batch["weight"]

  def unused(*a, **k):
    raise AssertionError("not used")

  return contract.Model(
    name="table",
    kind="classifier",
    num_classes=2,
    init=unused,
    apply=unused,
    per_example_loss=per_example_loss,
    embed=unused,
    apply_from_embeddings=unused,
    pooled=unused,
    eval_metrics=unused,
    embedding_path=("w",),
  )


def test_exact_rank_matches_enumeration():
  rng = np.random.default_rng(0)
  vocab, length = 20, 7
  w = rng.normal(size=(length, vocab)).astype(np.float32)
  model = _table_model()
  digits = np.arange(10, 20, dtype=np.int32)
  space = exposure.SecretSpace(
    template=np.array([3, 4, 5, 0, 0, 0, 0], np.int32),
    mask=np.ones(length, bool),
    secret_positions=np.array([3, 4, 5, 6]),
    alphabet=digits,
    label=1,
  )
  assert space.size == 10_000
  losses = exposure.candidate_losses(
    model, {"w": jnp.asarray(w)}, space, chunk_size=768, score="loss"
  )
  # float64 enumeration in the same (slot 0 most significant) order
  ref = np.array(
    [
      w[0, 3] + w[1, 4] + w[2, 5] + sum(w[3 + j, digits[d]] for j, d in enumerate(c))
      for c in itertools.product(range(10), repeat=4)
    ]
  )
  np.testing.assert_allclose(losses, ref, rtol=1e-5, atol=1e-5)
  best = int(np.argmin(ref))
  worst = int(np.argmax(ref))
  secrets = [best, worst, 1234]
  ranks, exps = exposure.exact_exposure(model, {"w": jnp.asarray(w)}, space, secrets, score="loss")
  assert ranks[0] == 1 and exps[0] == pytest.approx(math.log2(1e4))
  assert ranks[1] == 10_000 and exps[1] == pytest.approx(0.0)
  assert ranks[2] == int(np.sum(ref <= ref[1234]))
  assert space.index_of(digits[[1, 2, 3, 4]]) == 1234
  np.testing.assert_array_equal(
    np.asarray(space.tokens_for(np.array([1234])))[0, 3:], digits[[1, 2, 3, 4]]
  )
  with pytest.raises(ConfigError):
    space.index_of([1, 2, 3, 4])


def test_skew_normal_extrapolation_recovers_tail_beyond_the_sample():
  # Losses of a secret space that are skew-normal; the secret sits at the 1e-5 quantile, far
  # below anything a 5000-point sample contains, so only the fitted tail can place it.
  from scipy import stats

  a, loc, scale = -4.0, 10.0, 3.0
  secret_loss = stats.skewnorm.ppf(1e-5, a, loc=loc, scale=scale)
  sample = stats.skewnorm.rvs(a, loc=loc, scale=scale, size=5000, random_state=0)
  assert sample.min() > secret_loss
  est = exposure.extrapolated_exposure(sample, secret_loss)
  assert est == pytest.approx(math.log2(1e5), abs=1.0)
