"""Adapts Haiku networks into the trustml Model contract.

A Haiku network is given as two functions written with Haiku modules:

* ``embed_fn(tokens) -> [B, T, D]``
* ``body_fn(embeddings, mask, is_training) -> (logits, pooled)``
* optionally ``states_fn(embeddings, mask) -> [B, T, H]`` (per-token vectors before pooling)

They are transformed together with ``hk.multi_transform`` so they share parameters; the
resulting Model is indistinguishable downstream from a Flax one (``framework == "haiku"``).
Pass the functions untransformed: a whole-network ``hk.transform`` cannot be split at the
token embeddings, which APS and canary extraction differentiate with respect to.
:func:`check_haiku_functions` checks up front that the functions are what the contract needs
and names what is missing; the first trace checks what they return.
"""

import inspect
from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from trustml.core import validation
from trustml.models import contract

# What the Haiku functions must be for the Model contract (argument -> (arity, signature)).
HAIKU_FUNCTIONS = {
  "embed_fn": (1, "embed_fn(tokens) -> [B, T, D] token embeddings (APS, canary extraction)"),
  "body_fn": (
    3,
    "body_fn(embeddings, mask, is_training) -> (logits, pooled) (the rest of the net)",
  ),
  "states_fn": (2, "states_fn(embeddings, mask) -> [B, T, H] per-token states (optional)"),
}


def _describe(fn: Any) -> str:
  """A short name for a user's object in an error message."""
  if fn is None:
    return "None"
  return getattr(fn, "__name__", None) or type(fn).__name__


def _problem(field: str, fn: Any) -> str | None:
  """Why ``fn`` cannot serve as ``field`` (``None`` when it can)."""
  arity, signature = HAIKU_FUNCTIONS[field]
  if fn is None:
    return f"the Model contract needs {signature}"
  if isinstance(fn, (hk.Transformed, hk.TransformedWithState, hk.MultiTransformed)):
    return (
      f"pass the untransformed Haiku function {signature}: from_haiku transforms embed_fn and "
      "body_fn together (hk.multi_transform) so they share parameters"
    )
  if any(c.__module__.startswith("flax.") for c in type(fn).__mro__):
    return "is a Flax module: use trustml.models.from_flax (or from_nnx) for it"
  if not callable(fn):
    return f"must be a function {signature}"
  try:
    inspect.signature(fn).bind(*range(arity))
  except TypeError as e:
    return f"must accept {signature} ({e})"
  except ValueError:  # No signature to inspect (a C callable): trust it.
    pass
  return None


def check_haiku_functions(
  embed_fn: Any,
  body_fn: Any,
  states_fn: Any = None,
  *,
  embedding_path: Any = ("embed", "embeddings"),
) -> None:
  """Checks up front that the functions given to :func:`from_haiku` fit the Model contract.

  Args:
    embed_fn: the user's embedding function.
    body_fn: the user's body function.
    states_fn: the optional per-token states function (``None`` is allowed).
    embedding_path: the path of the token table in the Haiku parameters.

  Raises:
    ConfigError: ``<arg>=<name> is invalid: ...`` naming every missing or malformed function
      and the signature the contract needs, or a malformed ``embedding_path``.
  """
  given = {"embed_fn": embed_fn, "body_fn": body_fn}
  if states_fn is not None:
    given["states_fn"] = states_fn
  problems = [(field, fn, _problem(field, fn)) for field, fn in given.items()]
  problems = [(field, fn, why) for field, fn, why in problems if why is not None]
  if problems:
    names = ", ".join(f"{field}={_describe(fn)}" for field, fn, _ in problems)
    raise validation.ConfigError(
      f"{names} {'is' if len(problems) == 1 else 'are'} invalid: "
      + "; ".join(why for _, _, why in problems)
      + " (see trustml.models.haiku_adapter.haiku_bag_classifier for a complete example)"
    )
  path = tuple(embedding_path) if isinstance(embedding_path, (tuple, list)) else None
  if not path or not all(isinstance(k, str) for k in path):
    raise validation.ConfigError(
      f"embedding_path={embedding_path!r} is invalid: must be a non-empty tuple of parameter "
      "names, e.g. ('embed', 'embeddings') for an hk.Embed named 'embed'"
    )


def _checked_embeddings(embed_fn: Callable, tokens: jax.Array) -> jax.Array:
  """``embed_fn(tokens)``, checked to be ``[B, T, D]`` (raises at trace time otherwise)."""
  emb = embed_fn(tokens)
  if getattr(emb, "ndim", None) != 3 or emb.shape[:2] != tokens.shape:
    raise validation.ConfigError(
      f"embed_fn={_describe(embed_fn)} is invalid: returned shape {getattr(emb, 'shape', emb)} "
      f"for tokens of shape {tokens.shape}; {HAIKU_FUNCTIONS['embed_fn'][1]}"
    )
  return emb


def _checked_body(body_fn: Callable, emb: jax.Array, mask: jax.Array, is_training: bool) -> Any:
  """``body_fn(emb, mask, is_training)``, checked to be a ``(logits, pooled)`` pair."""
  out = body_fn(emb, mask, is_training)
  if not (isinstance(out, (tuple, list)) and len(out) == 2):
    got = f"an array of shape {out.shape}" if hasattr(out, "shape") else type(out).__name__
    raise validation.ConfigError(
      f"body_fn={_describe(body_fn)} is invalid: returned {got}; {HAIKU_FUNCTIONS['body_fn'][1]}"
    )
  logits, pooled = out
  if getattr(pooled, "ndim", None) != 2 or pooled.shape[0] != emb.shape[0]:
    raise validation.ConfigError(
      f"body_fn={_describe(body_fn)} is invalid: its pooled output has shape "
      f"{getattr(pooled, 'shape', pooled)}, not [B, D] for a batch of {emb.shape[0]}"
    )
  return logits, pooled


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

  Raises:
    ConfigError: up front, naming a missing or malformed function (or ``embedding_path``,
      ``kind``, ``num_classes``); at the first trace (``model.init``, which
      ``trustml.train.from_arrays`` calls), naming a function that returns the wrong structure.

  Example:
    >>> def embed_fn(tokens):
    ...   return hk.Embed(100, 16, name="embed")(tokens)
    >>> def body_fn(emb, mask, is_training):
    ...   pooled = (emb * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1)
    ...   return hk.Linear(2, name="head")(pooled), pooled
    >>> model = from_haiku(embed_fn, body_fn, name="mine", num_classes=2,
    ...                    embedding_path=("embed", "embeddings"))
  """
  check_haiku_functions(embed_fn, body_fn, states_fn, embedding_path=embedding_path)
  validation.one_of("kind", kind, ("classifier", "lm"))
  validation.positive_int("num_classes", num_classes)
  states = states_fn if states_fn is not None else (lambda emb, mask: emb)

  def _fns():
    def init(tokens, mask):
      emb = _checked_embeddings(embed_fn, tokens)
      states(emb, mask)
      return _checked_body(body_fn, emb, mask, False)

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
    embedding_path=tuple(embedding_path),
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


__all__ = ["HAIKU_FUNCTIONS", "check_haiku_functions", "from_haiku", "haiku_bag_classifier"]
