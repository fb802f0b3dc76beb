"""Adapts Haiku networks into the trustml Model contract.

A Haiku network is given as two functions written with Haiku modules:

* ``embed_fn(tokens) -> [B, T, D]``
* ``body_fn(embeddings, mask, is_training) -> (logits, pooled)``
* optionally ``states_fn(embeddings, mask) -> [B, T, H]`` (per-token vectors before pooling)

They are transformed together with ``hk.multi_transform`` so they share parameters; the
resulting Model is indistinguishable downstream from a Flax one (``framework == "haiku"``).
"""

from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from trustml.models import contract


def from_haiku(
  embed_fn: Callable[[jax.Array], jax.Array],
  body_fn: Callable[[jax.Array, jax.Array, bool], tuple[jax.Array, jax.Array]],
  *,
  name: str,
  num_classes: int,
  embedding_path: tuple[str, ...],
  kind: str = "classifier",
  states_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> contract.Model:
  """Wraps Haiku functions into a Model.

  Args:
    embed_fn: token ids ``[B, T]`` -> embeddings ``[B, T, D]`` (Haiku code).
    body_fn: ``(embeddings, mask, is_training) -> (logits, pooled)`` (Haiku code).
    name: model name.
    num_classes: classes (vocabulary size for an LM).
    embedding_path: path of the token table in the Haiku params, e.g. ``("embed", "embeddings")``.
    kind: ``"classifier"`` or ``"lm"``.
    states_fn: per-token states (Haiku code sharing the body's parameters), giving the
      Model's ``token_states``; padding positions are zeroed here.

  Returns:
    The Model.
  """
  states = states_fn if states_fn is not None else (lambda emb, mask: emb)

  def _fns():
    def init(tokens, mask):
      emb = embed_fn(tokens)
      states(emb, mask)
      return body_fn(emb, mask, False)

    return init, (embed_fn, body_fn, states)

  transformed = hk.multi_transform(_fns)
  embed_apply, body_apply, states_apply = transformed.apply

  def init(rng: jax.Array, batch) -> Any:
    return transformed.init(rng, batch["tokens"], batch["mask"])

  def embed(params, batch) -> jax.Array:
    return embed_apply(params, None, batch["tokens"])

  def apply_from_embeddings(params, embeddings, batch, *, rng=None, train=False) -> jax.Array:
    return body_apply(params, rng if train else None, embeddings, batch["mask"], train)[0]

  def apply(params, batch, *, rng=None, train=False) -> jax.Array:
    return apply_from_embeddings(params, embed(params, batch), batch, rng=rng, train=train)

  def pooled(params, batch) -> jax.Array:
    return body_apply(params, None, embed(params, batch), batch["mask"], False)[1]

  def token_states(params, batch) -> jax.Array:
    out = states_apply(params, None, embed(params, batch), batch["mask"])
    return out * batch["mask"][..., None].astype(out.dtype)

  return contract.assemble(
    name=name,
    kind=kind,
    num_classes=num_classes,
    init=init,
    apply=apply,
    embed=embed,
    apply_from_embeddings=apply_from_embeddings,
    pooled=pooled,
    embedding_path=embedding_path,
    framework="haiku",
    token_states=token_states if states_fn is not None else None,
  )


def haiku_bag_classifier(
  vocab_size: int, num_classes: int, embed_dim: int = 32, hidden_dim: int = 64
) -> contract.Model:
  """A Haiku mean-pooled bag-of-embeddings classifier (reference Haiku model)."""

  def embed_fn(tokens):
    return hk.Embed(vocab_size, embed_dim, name="embed")(tokens)

  def body_fn(emb, mask, is_training):
    del is_training
    m = mask.astype(emb.dtype)[..., None]
    x = (emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    x = jax.nn.relu(hk.Linear(hidden_dim, name="hidden")(x))
    return hk.Linear(num_classes, name="head")(x), x

  return from_haiku(
    embed_fn,
    body_fn,
    name="haiku_bag",
    num_classes=num_classes,
    embedding_path=("embed", "embeddings"),
    states_fn=lambda emb, mask: emb,  # a bag has no context: a token's state is its embedding
  )


__all__ = ["from_haiku", "haiku_bag_classifier"]
