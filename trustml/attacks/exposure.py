"""Canary exposure (the secret sharer, Carlini et al. 2019).

A canary is a template with K secret slots, each filled from an alphabet of A tokens (the
digit tokens for "my pin code is 4 7 1 9"), so the secret space R has ``A^K`` members. The
model's loss on the canary text with its label ranks every member of R; the exposure of the
true secret is ``log2 |R| − log2 rank``, between 0 and ``log2 |R|`` (13.29 bits for a 4-digit
code when the true secret has the lowest loss of all 10⁴).

The rank is computed **exactly** by scoring the whole space in fixed-size chunks inside one
jitted ``lax.map``; for spaces too large to enumerate, :func:`extrapolated_exposure` fits a
skew-normal to the losses of a random sample of R and reads the secret's loss off its CDF.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from trustml.attacks import lira
from trustml.core import validation
from trustml.models import contract


@dataclasses.dataclass(frozen=True)
class SecretSpace:
  """All fillings of a canary template's secret slots.

  Attributes:
    template: ``[T]`` int32 token ids of the canary (secret slots hold any value).
    mask: ``[T]`` bool token validity.
    secret_positions: ``[K]`` positions of the secret slots in ``template``.
    alphabet: ``[A]`` int32 token ids a slot can take (e.g. the ids of "0".."9").
    label: the canary's class label.
  """

  template: np.ndarray
  mask: np.ndarray
  secret_positions: np.ndarray
  alphabet: np.ndarray
  label: int

  @property
  def size(self) -> int:
    """``|R| = A^K``."""
    return int(len(self.alphabet) ** len(self.secret_positions))

  def digits_of(self, index: jax.typing.ArrayLike) -> jax.Array:
    """Alphabet indices ``[..., K]`` of secret number ``index`` (slot 0 most significant)."""
    a, k = len(self.alphabet), len(self.secret_positions)
    powers = jnp.asarray([a ** (k - 1 - j) for j in range(k)], jnp.int32)
    return (jnp.asarray(index, jnp.int32)[..., None] // powers) % a

  def index_of(self, secret_tokens: ArrayLike) -> int:
    """Index in R of a secret given as K token ids.

    Raises:
      ConfigError: if a token is not in the alphabet.
    """
    lookup = {int(t): i for i, t in enumerate(np.asarray(self.alphabet))}
    index = 0
    for tok in np.asarray(secret_tokens).reshape(-1):
      if int(tok) not in lookup:
        raise validation.ConfigError(f"secret token {int(tok)} is not in the secret alphabet")
      index = index * len(self.alphabet) + lookup[int(tok)]
    return index

  def tokens_for(self, index: jax.typing.ArrayLike) -> jax.Array:
    """``[B, T]`` canary tokens for secret numbers ``index`` ``[B]``."""
    secret = jnp.asarray(self.alphabet, jnp.int32)[self.digits_of(index)]  # [B, K]
    base = jnp.broadcast_to(
      jnp.asarray(self.template, jnp.int32), secret.shape[:-1] + (len(self.template),)
    )
    return base.at[..., jnp.asarray(self.secret_positions)].set(secret)


def _batch_for(space: SecretSpace, tokens: jax.Array) -> dict[str, jax.Array]:
  b = tokens.shape[0]
  return {
    "tokens": tokens,
    "mask": jnp.broadcast_to(jnp.asarray(space.mask, bool), tokens.shape),
    "label": jnp.full((b,), space.label, jnp.int32),
    "weight": jnp.ones((b,), jnp.float32),
  }


_COMPILED: dict[int, tuple[contract.Model, object]] = {}


def _loss_fn(model: contract.Model):
  """A jitted whole-space scorer for ``model`` (cached; the Model holds a dict, so is not hashable)."""
  if id(model) in _COMPILED and _COMPILED[id(model)][0] is model:
    return _COMPILED[id(model)][1]

  @functools.partial(jax.jit, static_argnames=("label", "chunk_size", "num_chunks", "score"))
  def all_losses(params, template, mask, positions, alphabet, label, chunk_size, num_chunks, score):
    space = SecretSpace(template, mask, positions, alphabet, label)

    def chunk(start):
      index = start + jnp.arange(chunk_size, dtype=jnp.int32)
      batch = _batch_for(space, space.tokens_for(index))
      if score == "log_odds":
        return -lira.logit_scaled_confidence(model.apply(params, batch), batch["label"])
      return model.per_example_loss(params, batch)

    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
    return jax.lax.map(chunk, starts).reshape(-1)

  _COMPILED[id(model)] = (model, all_losses)
  return all_losses


def candidate_losses(
  model: contract.Model,
  params,
  space: SecretSpace,
  *,
  chunk_size: int = 1024,
  score: str = "log_odds",
) -> np.ndarray:
  """The loss of every member of the secret space, in index order.

  Args:
    model: a classifier ``Model``.
    params: its parameters.
    space: the secret space.
    chunk_size: candidates scored per step of the jitted ``lax.map``.
    score: ``"log_odds"`` (default) ranks by ``−(log p_y − log(1 − p_y))``, a strictly
      increasing function of the cross-entropy ``−log p_y`` that does not saturate in float32
      when a memorised canary has ``p_y ≈ 1`` (the cross-entropy then rounds to equal values
      and ties would hide the rank); ``"loss"`` uses ``model.per_example_loss`` as is.

  Returns:
    ``[|R|]`` float losses, lower = more likely.
  """
  validation.positive_int("chunk_size", chunk_size)
  validation.one_of("score", score, ("log_odds", "loss"))
  size = space.size
  chunk_size = min(chunk_size, size)
  num_chunks = -(-size // chunk_size)
  # Indices past |R| wrap around the digit arithmetic; they are scored and dropped.
  losses = _loss_fn(model)(
    params,
    np.asarray(space.template, np.int32),
    np.asarray(space.mask, bool),
    np.asarray(space.secret_positions, np.int32),
    np.asarray(space.alphabet, np.int32),
    int(space.label),
    chunk_size,
    num_chunks,
    score,
  )
  return np.asarray(losses, dtype=np.float64)[:size]


def rank_of(losses: ArrayLike, secret_index: int) -> int:
  """1-based rank of a secret among all candidates by loss (1 = lowest loss).

  Ties with the secret's loss are counted against the secret (rank = 1 + #candidates with
  loss <= the secret's, excluding itself), so exposure is never overstated by ties.
  """
  losses = np.asarray(losses, dtype=np.float64)
  own = losses[secret_index]
  return int(np.sum(losses <= own))


def exposure_from_rank(rank: ArrayLike, space_size: int) -> np.ndarray:
  """``log2 |R| − log2 rank`` (bits)."""
  return math.log2(space_size) - np.log2(np.asarray(rank, dtype=np.float64))


def exact_exposure(
  model: contract.Model,
  params,
  space: SecretSpace,
  secret_indices: ArrayLike,
  *,
  chunk_size: int = 1024,
  score: str = "log_odds",
) -> tuple[np.ndarray, np.ndarray]:
  """Exact ranks and exposures of secrets that share one template and label.

  Args:
    model: classifier ``Model``.
    params: its parameters.
    space: the secret space of the template.
    secret_indices: ``[C]`` indices in R of the inserted secrets.
    chunk_size: candidates per jitted chunk.
    score: see :func:`candidate_losses`.

  Returns:
    ``(ranks [C], exposures [C])``.
  """
  losses = candidate_losses(model, params, space, chunk_size=chunk_size, score=score)
  ranks = np.asarray([rank_of(losses, int(i)) for i in np.asarray(secret_indices).reshape(-1)])
  return ranks, exposure_from_rank(ranks, space.size)


def extrapolated_exposure(sample_losses: ArrayLike, secret_loss: float) -> float:
  """Exposure estimated from a skew-normal fit to a random sample of the secret space.

  Args:
    sample_losses: losses of candidates drawn uniformly from R (a few thousand suffice).
    secret_loss: the loss of the true secret.

  Returns:
    ``−log2 P[loss <= secret_loss]`` under the fitted skew-normal (bits).
  """
  sample = np.asarray(sample_losses, dtype=np.float64).reshape(-1)
  if sample.size < 10:
    raise validation.ConfigError("extrapolated_exposure needs at least 10 sampled losses")
  a, loc, scale = stats.skewnorm.fit(sample)
  log_cdf = stats.skewnorm.logcdf(secret_loss, a, loc=loc, scale=scale)
  return float(-log_cdf / math.log(2.0))


__all__ = [
  "SecretSpace",
  "candidate_losses",
  "exact_exposure",
  "exposure_from_rank",
  "extrapolated_exposure",
  "rank_of",
]
