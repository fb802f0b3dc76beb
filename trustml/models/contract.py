"""The one Model contract shared by DP, federated learning, fairness and attacks.

A model is data, not a class hierarchy: an immutable bundle of pure functions
(in the manner of FedJAX's ``Model``). Flax and Haiku networks are adapted into it;
nothing downstream knows which framework produced it.

Batches are dicts of arrays (see :mod:`trustml.core.types`): ``tokens`` int32 ``[B, T]``,
``mask`` ``[B, T]``, ``label`` int32 ``[B]`` (classifiers), ``weight`` float32 ``[B]``
(0.0 for padding examples), optional ``group`` and ``user_id``.

For language models (``kind == "lm"``) the targets are the next tokens of ``tokens``:
position ``t`` predicts ``tokens[:, t + 1]`` where ``mask[:, t + 1]`` is set.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from trustml.core import validation
from trustml.core.types import Batch, Params

InitFn = Callable[[jax.Array, Batch], Params]
ApplyFn = Callable[..., jax.Array]  # (params, batch, *, rng=None, train=False) -> logits
LossFn = Callable[..., jax.Array]  # (params, batch, rng=None) -> [B]
EmbedFn = Callable[[Params, Batch], jax.Array]  # -> [B, T, D]
FromEmbFn = Callable[..., jax.Array]  # (params, embeddings, batch, *, rng=None, train=False)
MetricsFn = Callable[[Params, Batch], Mapping[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Model:
  """An immutable bundle of pure functions describing a network.

  Attributes:
    name: human-readable name (``"transformer"``, ``"bag"``, ...).
    kind: ``"classifier"`` (logits ``[B, C]``) or ``"lm"`` (logits ``[B, T, V]``).
    num_classes: classes of a classifier, vocabulary size of an LM.
    init: ``init(rng, batch) -> params``.
    apply: ``apply(params, batch, *, rng=None, train=False) -> logits``. ``rng`` drives dropout
      and is required when ``train=True`` and the model has dropout.
    per_example_loss: ``per_example_loss(params, batch, rng=None) -> [B]``: cross-entropy per
      example (mean token NLL per sequence for LMs), multiplied by ``batch["weight"]`` so padding
      examples contribute exactly 0. ``rng`` not ``None`` switches training mode (dropout) on.
    embed: ``embed(params, batch) -> [B, T, D]``: the token embeddings fed to the network.
    apply_from_embeddings: ``apply_from_embeddings(params, embeddings, batch, *, rng=None,
      train=False) -> logits``; ``apply(p, b) == apply_from_embeddings(p, embed(p, b), b)``.
    pooled: ``pooled(params, batch) -> [B, D]``: the sentence representation before the
      output head (used by SEAT/CEAT, cluster-skew partitions and attacks).
    token_states: ``token_states(params, batch) -> [B, T, H]``: one vector per token, the
      last per-position representation before pooling (the embedding for a bag of
      embeddings, the convolution features for a CNN, the final encoder states for a
      transformer); padding positions are 0. Token-level CEAT reads a word's own vector here.
      ``None`` for models that do not provide it.
    eval_metrics: ``eval_metrics(params, batch) -> dict`` of *sums* over the batch, weighted
      by ``weight``: ``loss_sum``, ``count`` and, for classifiers, ``correct``; for LMs
      ``token_nll_sum`` and ``token_count``. Reduce with :func:`trustml.train.evaluate`.
    embedding_path: path of the token-embedding table inside ``params`` (a tuple of keys).
    framework: ``"flax"`` or ``"haiku"``.
    extras: free-form static facts (vocab size, width, depth, max length).
  """

  name: str
  kind: str
  num_classes: int
  init: InitFn
  apply: ApplyFn
  per_example_loss: LossFn
  embed: EmbedFn
  apply_from_embeddings: FromEmbFn
  pooled: EmbedFn
  eval_metrics: MetricsFn
  embedding_path: tuple[str, ...]
  framework: str = "flax"
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  token_states: EmbedFn | None = None

  def embedding_table(self, params: Params) -> jax.Array:
    """Returns the token-embedding table ``[V, D]`` stored at ``embedding_path``."""
    node = params
    for key in self.embedding_path:
      node = node[key]
    return node


def _upcast(x: jax.Array) -> jax.Array:
  """Computes in at least float32 (keeps float64 inputs float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def classifier_losses(logits: jax.Array, batch: Batch) -> jax.Array:
  """Weighted per-example softmax cross-entropy ``[B]`` (0 for weight-0 examples)."""
  logp = jax.nn.log_softmax(_upcast(logits), axis=-1)
  nll = -jnp.take_along_axis(logp, batch["label"][:, None].astype(jnp.int32), axis=-1)[:, 0]
  return nll * batch["weight"].astype(nll.dtype)


def lm_token_nll(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """Next-token NLL ``[B, T-1]`` and its target mask ``[B, T-1]`` for a causal LM."""
  logp = jax.nn.log_softmax(_upcast(logits[:, :-1]), axis=-1)
  targets = batch["tokens"][:, 1:].astype(jnp.int32)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  target_mask = batch["mask"][:, 1:].astype(nll.dtype)
  return nll * target_mask, target_mask


def lm_losses(logits: jax.Array, batch: Batch) -> jax.Array:
  """Weighted per-sequence mean next-token NLL ``[B]`` for a causal LM."""
  nll, target_mask = lm_token_nll(logits, batch)
  per_seq = nll.sum(-1) / jnp.maximum(target_mask.sum(-1), 1.0)
  return per_seq * batch["weight"].astype(per_seq.dtype)


def classifier_metric_sums(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
  """Weighted sums ``loss_sum``, ``correct``, ``count`` for a classifier batch."""
  w = batch["weight"].astype(jnp.float32)
  losses = classifier_losses(logits, batch)
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32) * w
  return {"loss_sum": losses.sum(), "correct": correct.sum(), "count": w.sum()}


def lm_metric_sums(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
  """Weighted sums for an LM batch: per-sequence loss and token-level NLL for perplexity."""
  w = batch["weight"].astype(jnp.float32)
  nll, target_mask = lm_token_nll(logits, batch)
  per_seq = nll.sum(-1) / jnp.maximum(target_mask.sum(-1), 1.0)
  correct = (jnp.argmax(logits[:, :-1], -1) == batch["tokens"][:, 1:]).astype(jnp.float32)
  return {
    "loss_sum": (per_seq * w).sum(),
    "count": w.sum(),
    "token_nll_sum": (nll.sum(-1) * w).sum(),
    "token_count": (target_mask.sum(-1) * w).sum(),
    "token_correct": ((correct * target_mask).sum(-1) * w).sum(),
  }


def assemble(
  *,
  name: str,
  kind: str,
  num_classes: int,
  init: InitFn,
  apply: ApplyFn,
  embed: EmbedFn,
  apply_from_embeddings: FromEmbFn,
  pooled: EmbedFn,
  embedding_path: tuple[str, ...],
  framework: str = "flax",
  extras: Mapping[str, Any] | None = None,
  token_states: EmbedFn | None = None,
) -> Model:
  """Builds a Model from a network's functions, deriving the loss and metrics from ``kind``.

  ``per_example_loss`` is :func:`classifier_losses` (or :func:`lm_losses`) of
  ``apply(params, batch, rng=rng, train=rng is not None)``; ``eval_metrics`` the matching
  metric sums of ``apply(params, batch)``. Framework adapters (Flax, Haiku) call this so every
  model computes its loss the same way.

  Raises:
    ConfigError: for an unknown ``kind`` (a ``ValueError``).
  """
  validation.one_of("kind", kind, ("classifier", "lm"))
  loss_of = lm_losses if kind == "lm" else classifier_losses
  sums_of = lm_metric_sums if kind == "lm" else classifier_metric_sums

  def per_example_loss(params, batch, rng=None) -> jax.Array:
    return loss_of(apply(params, batch, rng=rng, train=rng is not None), batch)

  def eval_metrics(params, batch):
    return sums_of(apply(params, batch), batch)

  return Model(
    name=name,
    kind=kind,
    num_classes=num_classes,
    init=init,
    apply=apply,
    per_example_loss=per_example_loss,
    embed=embed,
    apply_from_embeddings=apply_from_embeddings,
    pooled=pooled,
    eval_metrics=eval_metrics,
    embedding_path=embedding_path,
    framework=framework,
    extras=dict(extras or {}),
    token_states=token_states,
  )


__all__ = [
  "Model",
  "assemble",
  "classifier_losses",
  "classifier_metric_sums",
  "lm_losses",
  "lm_metric_sums",
  "lm_token_nll",
]
