"""Canary extraction by white-box model inversion (ModIvA, Parikh et al. 2022).

The attacker knows the trained parameters, the canary's prefix (e.g. "my pin code is") and its
label, and searches for the unknown tokens that make the classifier most confident in that
label. The discrete search is relaxed: each unknown position holds a distribution
``p_k = softmax(θ_k / τ)`` over a candidate token set, and its input embedding is the
``p_k``-mixture of the candidates' embeddings. ``θ`` is optimised with Adam to maximise
the label's log-odds ``log p − log(1 − p)`` (a strictly increasing function of
``log p(label | canary)`` that, unlike ``log p``, does not saturate at 0 in float32 once the
prefix alone makes the label near-certain) while the temperature ``τ`` is annealed geometrically and an entropy
penalty grows, pushing each ``p_k`` towards one-hot; the result is decoded by ``argmax``.
Many random restarts run as one ``vmap`` inside one ``jit``; the decoded candidates are then
re-scored exactly (discrete tokens) and ranked.

Discrete refinement (``refine_sweeps``, on by default): the argmax decoding of a relaxation can
land next to the discrete optimum (e.g. one digit off) even when the model ranks the true secret
first among all codes. Each decoded restart is therefore improved by exact coordinate ascent:
position by position, every candidate token is tried with the other positions fixed and the one
with the highest exact log-odds is kept if it strictly improves. Each accepted move increases the
exact objective, so refinement never makes a restart worse; a sweep costs ``K·A`` forward passes
per restart (all candidates of one position in one batch). Both the refined result and the
relaxation alone (``relaxed_exact_match``) are reported.

Candidate set: by default the full vocabulary. Restricting it to the digit tokens is a
legitimate attacker-knowledge choice when the secret format is known ("a 4-digit pin"), as in
the exposure metric's secret space; it is an option, not a requirement.

Mixture embeddings are exact for any embedding layer that is affine per position (token table,
scaling, positional embeddings): the embedding of each candidate at each unknown position is
computed with ``model.embed`` and the mixture is taken of those vectors.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike

from trustml.attacks import lira
from trustml.core import conv_layout, validation
from trustml.models import contract


@dataclasses.dataclass(frozen=True)
class ExtractionConfig:
  """Settings of the relaxed search.

  Attributes:
    num_restarts: random restarts, vmapped.
    num_steps: Adam steps per restart.
    learning_rate: Adam learning rate on the relaxation logits θ.
    init_scale: std of the random initial θ.
    temperature_start: τ at step 0.
    temperature_end: τ at the last step (geometric schedule).
    entropy_weight_end: weight of the mean per-position entropy at the last step (linear ramp
      from 0); pushes the relaxation towards one-hot.
    refine_sweeps: passes of exact coordinate ascent over the positions after decoding
      (0 = the relaxation alone).
    refine_batch: restarts refined together (each evaluates ``A`` candidates per position;
      lower it for a large candidate set to bound memory).
  """

  num_restarts: int = 64
  num_steps: int = 200
  learning_rate: float = 0.1
  init_scale: float = 1.0
  temperature_start: float = 1.0
  temperature_end: float = 0.1
  entropy_weight_end: float = 0.1
  refine_sweeps: int = 2
  refine_batch: int = 64

  def validate(self) -> "ExtractionConfig":
    """Checks every field; returns self."""
    validation.positive_int("extraction.num_restarts", self.num_restarts)
    validation.positive_int("extraction.num_steps", self.num_steps)
    validation.positive("extraction.learning_rate", self.learning_rate)
    validation.non_negative("extraction.init_scale", self.init_scale)
    validation.positive("extraction.temperature_start", self.temperature_start)
    validation.positive("extraction.temperature_end", self.temperature_end)
    validation.non_negative("extraction.entropy_weight_end", self.entropy_weight_end)
    validation.non_negative_int("extraction.refine_sweeps", self.refine_sweeps)
    validation.positive_int("extraction.refine_batch", self.refine_batch)
    return self


@dataclasses.dataclass(frozen=True)
class ExtractionResult:
  """Outcome of extracting one canary.

  Attributes:
    best_secret: ``[K]`` decoded token ids of the best restart (by exact discrete log-odds).
    exact_match: whether ``best_secret`` equals the true secret.
    token_accuracy: share of the K positions decoded correctly.
    rank: 1-based rank of the true secret among the distinct decoded candidates by exact
      log-odds; ``num_candidates + 1`` if no restart decoded it.
    num_candidates: distinct decoded candidates.
    best_log_odds: exact ``log p − log(1 − p)`` of the label for the best canary.
    relaxed_exact_match: whether the best restart *before* discrete refinement equals the
      true secret (the relaxation alone; equals ``exact_match`` when ``refine_sweeps`` is 0).
  """

  best_secret: np.ndarray
  exact_match: bool
  token_accuracy: float
  rank: int
  num_candidates: int
  best_log_odds: float
  relaxed_exact_match: bool


_COMPILED: dict[int, tuple[contract.Model, object]] = {}


def _search_fn(model: contract.Model):
  if id(model) in _COMPILED and _COMPILED[id(model)][0] is model:
    return _COMPILED[id(model)][1]

  @functools.partial(jax.jit, static_argnames=("cfg",))
  def search(params, tokens, mask, positions, candidates, label, key, cfg: ExtractionConfig):
    num_cand, num_pos = candidates.shape[0], positions.shape[0]
    batch = {
      "tokens": tokens[None],
      "mask": mask[None],
      "label": jnp.full((1,), label, jnp.int32),
      "weight": jnp.ones((1,), jnp.float32),
    }
    base_emb = model.embed(params, batch)  # [1, T, D]

    # Embedding of every candidate at every unknown position: [K, A, D].
    def emb_of(tok):
      filled = tokens.at[positions].set(tok)
      b = dict(batch, tokens=filled[None])
      return model.embed(params, b)[0, positions]  # [K, D]

    cand_emb = jax.lax.map(emb_of, candidates).transpose(1, 0, 2)
    schedule = optax.adam(cfg.learning_rate)

    def objective(theta, tau, ent_w):
      probs = jax.nn.softmax(theta / tau, axis=-1)  # [K, A]
      mixed = jnp.einsum("ka,kad->kd", probs, cand_emb)
      emb = base_emb.at[0, positions].set(mixed.astype(base_emb.dtype))
      logits = model.apply_from_embeddings(params, emb, batch)
      log_odds = lira.logit_scaled_confidence(logits, batch["label"])[0]
      entropy = -jnp.sum(probs * jnp.log(probs + 1e-12), -1).mean()
      return -log_odds + ent_w * entropy

    def run_one(k):
      theta = cfg.init_scale * jax.random.normal(k, (num_pos, num_cand), jnp.float32)
      opt_state = schedule.init(theta)

      def step(carry, t):
        theta, opt_state = carry
        frac = t / max(cfg.num_steps - 1, 1)
        tau = cfg.temperature_start * (cfg.temperature_end / cfg.temperature_start) ** frac
        grads = jax.grad(objective)(theta, tau, cfg.entropy_weight_end * frac)
        updates, opt_state = schedule.update(grads, opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state), None

      # conv_layout: XLA:CPU emits a CNN's non-canonical (backward) convolutions inside the
      # rolled scan as naive loop nests otherwise; identity on other backends.
      body = conv_layout.loop_body(step)
      (theta, _), _ = jax.lax.scan(body, (theta, opt_state), jnp.arange(cfg.num_steps))
      return jnp.argmax(theta, -1)  # [K] indices into candidates

    keys = jax.random.split(key, cfg.num_restarts)
    decoded = candidates[jax.vmap(run_one)(keys)]  # [R, K] token ids

    def exact_log_odds(secret):
      b = dict(batch, tokens=tokens.at[positions].set(secret)[None])
      return lira.logit_scaled_confidence(model.apply(params, b), b["label"])[0]

    def refine(secret):  # [K] -> [K]: exact coordinate ascent, unrolled (K·sweeps is small).
      current = exact_log_odds(secret)
      for _ in range(cfg.refine_sweeps):
        for k in range(num_pos):
          trials = jnp.broadcast_to(secret, (num_cand, num_pos)).at[:, k].set(candidates)
          scores = jax.vmap(exact_log_odds)(trials)
          best = jnp.argmax(scores)
          better = scores[best] > current
          secret = jnp.where(better, trials[best], secret)
          current = jnp.where(better, scores[best], current)
      return secret

    refined = decoded
    if cfg.refine_sweeps:
      refined = jax.lax.map(refine, decoded, batch_size=min(cfg.refine_batch, cfg.num_restarts))
    return decoded, jax.vmap(exact_log_odds)(decoded), refined, jax.vmap(exact_log_odds)(refined)

  _COMPILED[id(model)] = (model, search)
  return search


def extract_secret(
  model: contract.Model,
  params,
  tokens: ArrayLike,
  mask: ArrayLike,
  secret_positions: ArrayLike,
  label: int,
  true_secret: ArrayLike,
  *,
  candidates: ArrayLike,
  key: jax.Array,
  config: ExtractionConfig = ExtractionConfig(),
) -> ExtractionResult:
  """Runs the relaxed search (and discrete refinement) for one canary and scores it.

  Args:
    model: classifier ``Model`` (white-box access).
    params: its trained parameters.
    tokens: ``[T]`` canary tokens; the values at ``secret_positions`` are ignored by the search.
    mask: ``[T]`` token validity.
    secret_positions: ``[K]`` unknown positions.
    label: the canary's known label.
    true_secret: ``[K]`` true token ids (used only to score the result).
    candidates: ``[A]`` token ids a position may take (the vocabulary, or the digits).
    key: PRNG key of the restarts.
    config: search settings.

  Returns:
    An :class:`ExtractionResult`.

  Raises:
    ConfigError: on an invalid config, empty candidates, or positions outside the sequence.
  """
  config.validate()
  tokens = np.asarray(tokens, np.int32)
  positions = np.asarray(secret_positions, np.int32).reshape(-1)
  candidates = np.asarray(candidates, np.int32).reshape(-1)
  true_secret = np.asarray(true_secret, np.int32).reshape(-1)
  if candidates.size == 0:
    raise validation.ConfigError("extraction candidates must be non-empty")
  if positions.size == 0 or positions.min() < 0 or positions.max() >= tokens.shape[0]:
    raise validation.ConfigError(
      f"secret_positions {positions.tolist()} must lie in [0, {tokens.shape[0]})"
    )
  if true_secret.shape != positions.shape:
    raise validation.ConfigError("true_secret must have one token per secret position")
  relaxed, relaxed_log_odds, decoded, log_odds = _search_fn(model)(
    params, tokens, np.asarray(mask, bool), positions, candidates, int(label), key, config
  )
  relaxed_best = np.asarray(relaxed)[int(np.argmax(np.asarray(relaxed_log_odds)))]
  decoded, log_odds = np.asarray(decoded), np.asarray(log_odds, np.float64)
  distinct, first = np.unique(decoded, axis=0, return_index=True)
  scores = log_odds[first]
  order = np.argsort(-scores, kind="mergesort")
  distinct, scores = distinct[order], scores[order]
  best = distinct[0]
  hits = np.nonzero((distinct == true_secret).all(-1))[0]
  rank = int(hits[0]) + 1 if hits.size else len(distinct) + 1
  return ExtractionResult(
    best_secret=best,
    exact_match=bool((best == true_secret).all()),
    token_accuracy=float((best == true_secret).mean()),
    rank=rank,
    num_candidates=len(distinct),
    best_log_odds=float(scores[0]),
    relaxed_exact_match=bool((relaxed_best == true_secret).all()),
  )


__all__ = ["ExtractionConfig", "ExtractionResult", "extract_secret"]
