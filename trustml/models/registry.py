"""Builds the Model contract from a model config (Flax Linen networks).

Example:
  >>> cfg = default_model_config("bag")
  >>> model = build_model(cfg, vocab_size=1000, num_classes=7, max_len=32)
"""

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from flax import linen as nn

from trustml.core import validation
from trustml.models import contract, networks

MODEL_NAMES = ("bag", "cnn", "transformer", "causal_lm")
POOLINGS = ("mean", "last", "max")

_DEFAULTS: dict[str, dict[str, Any]] = {
  "bag": dict(embed_dim=64, hidden_dim=128, dropout_rate=0.0),
  "cnn": dict(embed_dim=64, num_filters=64, kernel_sizes=(3, 4, 5), dropout_rate=0.0),
  "transformer": dict(
    embed_dim=128,
    num_layers=2,
    num_heads=4,
    mlp_dim=256,
    dropout_rate=0.1,
    pooling="mean",
    causal_attention=False,
    conv_kernel=0,
  ),
  "causal_lm": dict(embed_dim=128, num_layers=2, num_heads=4, mlp_dim=256, dropout_rate=0.0),
}


def default_model_config(name: str) -> ml_collections.ConfigDict:
  """The default ``model`` config section for network ``name``.

  Fields: ``name``; ``embed_dim`` (token embedding width); ``hidden_dim`` (bag MLP width);
  ``num_filters``/``kernel_sizes`` (CNN); ``num_layers``/``num_heads``/``mlp_dim``
  (transformers); ``pooling`` (``"mean"`` | ``"last"`` | ``"max"``) and ``causal_attention`` (the
  transformer classifier's sequence summary and attention mask), ``conv_kernel`` (width of
  the transformer's convolutional stem, 0 = none); ``dropout_rate`` in [0, 1).
  """
  validation.one_of("model.name", name, MODEL_NAMES)
  cfg = ml_collections.ConfigDict({"name": name})
  cfg.update(_DEFAULTS[name])
  return cfg


def validate_model(cfg: Mapping[str, Any]) -> None:
  """Checks a model config section before any compute.

  Raises:
    ConfigError: naming the offending field.
  """
  name = validation.one_of("model.name", cfg["name"], MODEL_NAMES)
  validation.known_fields("model", cfg.keys(), ("name", *_DEFAULTS[name]))
  for key, value in cfg.items():
    if key in ("embed_dim", "hidden_dim", "num_filters", "num_layers", "num_heads", "mlp_dim"):
      validation.positive_int(f"model.{key}", value)
  if "dropout_rate" in cfg:
    validation.in_range("model.dropout_rate", cfg["dropout_rate"], 0.0, 1.0, low_inclusive=True)
  if "conv_kernel" in cfg:
    validation.non_negative_int("model.conv_kernel", cfg["conv_kernel"])
  if "pooling" in cfg:
    validation.one_of("model.pooling", cfg["pooling"], POOLINGS)
  if "causal_attention" in cfg and not isinstance(cfg["causal_attention"], bool):
    raise validation.ConfigError(
      f"model.causal_attention={cfg['causal_attention']!r} is invalid: must be True or False"
    )
  if "kernel_sizes" in cfg:
    for k in cfg["kernel_sizes"]:
      validation.positive_int("model.kernel_sizes", k)
  if "num_heads" in cfg and cfg["embed_dim"] % cfg["num_heads"]:
    raise validation.ConfigError(
      f"model.num_heads={cfg['num_heads']} is invalid: must divide model.embed_dim={cfg['embed_dim']}"
    )


# What a Flax Linen module must provide for the Model contract (method -> why).
FLAX_METHODS = {
  "__call__": "__call__(tokens, mask, train) -> logits",
  "embed_tokens": "embed_tokens(tokens) -> [B, T, D] token embeddings (APS, canary extraction)",
  "from_embeddings": "from_embeddings(embeddings, mask, train) -> logits (the rest of the net)",
  "pool": "pool(embeddings, mask, train) -> [B, D] sentence representation (SEAT, partitions)",
}


def check_flax_module(module: Any) -> None:
  """Checks up front that ``module`` provides what :func:`from_flax` needs, naming what is not.

  Args:
    module: the user's network.

  Raises:
    ConfigError: ``module=<Name> is invalid: ...`` listing the missing methods and their
      signatures, or the ``__call__`` signature it lacks.
  """
  cls = type(module)
  if not isinstance(module, nn.Module):
    raise validation.ConfigError(
      f"module={cls.__name__} is invalid: from_flax takes a flax.linen.Module "
      "(use trustml.models.from_haiku for an hk.transform)"
    )
  missing = [m for m in FLAX_METHODS if not callable(getattr(cls, m, None))]
  if missing:
    raise validation.ConfigError(
      f"module={cls.__name__} is invalid: it lacks {', '.join(missing)}; the Model contract needs "
      + "; ".join(FLAX_METHODS[m] for m in missing)
      + " (see trustml.models.networks.BagOfEmbeddings for a complete example)"
    )
  import inspect  # noqa: PLC0415

  for method, args in (("__call__", 3), ("from_embeddings", 3), ("pool", 3), ("embed_tokens", 1)):
    try:
      inspect.signature(getattr(cls, method)).bind(module, *range(args))
    except TypeError as e:
      raise validation.ConfigError(
        f"module={cls.__name__} is invalid: {method} must accept {FLAX_METHODS[method]} ({e})"
      ) from None
    except ValueError:  # No signature to inspect (a C callable): trust it.
      continue


def check_model(model: contract.Model, params: Any, batch: Mapping[str, Any]) -> None:
  """Checks a Model on one batch: embedding table, logits shape, the embedding identity.

  Args:
    model: the Model (e.g. from :func:`from_flax`).
    params: its parameters (``model.init``).
    batch: an example batch.

  Raises:
    ConfigError: naming the first contract property the model breaks.
  """
  import numpy as np  # noqa: PLC0415

  try:
    table = model.embedding_table(params)
  except (KeyError, TypeError, IndexError):
    keys = list(params) if hasattr(params, "keys") else type(params).__name__
    raise validation.ConfigError(
      f"embedding_path={model.embedding_path!r} is invalid: no token-embedding table there "
      f"(top-level parameters: {keys}); pass "
      f"{'from_haiku' if model.framework == 'haiku' else 'from_flax'}(..., embedding_path=...)"
    ) from None
  if getattr(table, "ndim", 0) != 2:
    raise validation.ConfigError(
      f"embedding_path={model.embedding_path!r} is invalid: holds shape "
      f"{getattr(table, 'shape', None)}, not a [vocab, dim] table"
    )
  logits = np.asarray(model.apply(params, batch))
  b = np.asarray(batch["tokens"]).shape[0]
  want = (b, model.num_classes) if model.kind == "classifier" else (b, None, model.num_classes)
  if logits.ndim != len(want) or logits.shape[0] != b or logits.shape[-1] != model.num_classes:
    raise validation.ConfigError(
      f"num_classes={model.num_classes} is invalid: the module returns logits of shape "
      f"{logits.shape} for a batch of {b}"
    )
  again = np.asarray(model.apply_from_embeddings(params, model.embed(params, batch), batch))
  if not np.allclose(logits, again, rtol=1e-4, atol=1e-5):
    raise validation.ConfigError(
      f"module={model.name} is invalid: __call__(tokens) differs from "
      "from_embeddings(embed_tokens(tokens)) (max |diff| "
      f"{float(np.max(np.abs(logits - again))):.3g})"
    )


def from_flax(
  module: nn.Module,
  *,
  name: str,
  kind: str,
  num_classes: int,
  dropout_rate: float = 0.0,
  extras: Mapping[str, Any] | None = None,
  embedding_path: tuple[str, ...] = ("embed", "embedding"),
) -> contract.Model:
  """Wraps a Flax Linen network with ``embed_tokens``/``from_embeddings``/``pool`` into a Model.

  The module is checked up front (:func:`check_flax_module`): a missing method is named with
  the signature the contract needs, before anything is traced. :func:`check_model` checks a
  built Model on a batch (``trustml.train.from_arrays`` calls it).

  Args:
    module: the network (see :mod:`trustml.models.networks`): ``__call__(tokens, mask,
      train)``, ``embed_tokens(tokens)``, ``from_embeddings(embeddings, mask, train)``,
      ``pool(embeddings, mask, train)``; optionally ``token_states(embeddings, mask, train)``.
    name: model name.
    kind: ``"classifier"`` or ``"lm"``.
    num_classes: classes (vocabulary size for an LM).
    dropout_rate: the network's dropout rate (``rng`` is required in training mode when > 0).
    extras: static facts recorded on the Model.
    embedding_path: where the token-embedding table sits in the parameters (default: an
      ``nn.Embed`` attribute named ``embed``).

  Returns:
    The Model bundle.

  Raises:
    ConfigError: if the module lacks a method the contract needs.
  """
  check_flax_module(module)

  def _rngs(rng, train):
    if train and dropout_rate > 0 and rng is None:
      raise ValueError("train=True needs an rng for dropout")
    return {"dropout": rng} if (train and rng is not None) else {}

  def init(rng: jax.Array, batch) -> Any:
    return module.init({"params": rng}, batch["tokens"], batch["mask"])["params"]

  def embed(params, batch) -> jax.Array:
    return module.apply({"params": params}, batch["tokens"], method="embed_tokens")

  def apply_from_embeddings(params, embeddings, batch, *, rng=None, train=False) -> jax.Array:
    return module.apply(
      {"params": params},
      embeddings,
      batch["mask"],
      train,
      method="from_embeddings",
      rngs=_rngs(rng, train),
    )

  def apply(params, batch, *, rng=None, train=False) -> jax.Array:
    return module.apply(
      {"params": params}, batch["tokens"], batch["mask"], train, rngs=_rngs(rng, train)
    )

  def pooled(params, batch) -> jax.Array:
    emb = embed(params, batch)
    return module.apply({"params": params}, emb, batch["mask"], False, method="pool")

  def token_states(params, batch) -> jax.Array:
    emb = embed(params, batch)
    return module.apply({"params": params}, emb, batch["mask"], False, method="token_states")

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
    framework="flax",
    extras=extras,
    token_states=token_states if hasattr(module, "token_states") else None,
  )


def build_model(
  model_config: Mapping[str, Any], *, vocab_size: int, num_classes: int, max_len: int
) -> contract.Model:
  """Builds a Model from a ``model`` config section.

  Args:
    model_config: ``name`` in ``MODEL_NAMES`` and that network's fields.
    vocab_size: tokenizer vocabulary size.
    num_classes: number of classes (ignored for ``causal_lm``, which predicts the vocabulary).
    max_len: static sequence length (positions of the transformers).

  Returns:
    The Model.

  Raises:
    ConfigError: for invalid fields or sizes.
  """
  validate_model(model_config)
  validation.positive_int("vocab_size", vocab_size)
  validation.positive_int("max_len", max_len)
  name = model_config["name"]
  cfg = {k: v for k, v in model_config.items() if k != "name"}
  if "kernel_sizes" in cfg:
    cfg["kernel_sizes"] = tuple(cfg["kernel_sizes"])
  kind = "lm" if name == "causal_lm" else "classifier"
  if kind == "classifier":
    validation.positive_int("num_classes", num_classes)
  out_dim = vocab_size if kind == "lm" else num_classes
  if name == "bag":
    module = networks.BagOfEmbeddings(vocab_size, num_classes, **cfg)
  elif name == "cnn":
    module = networks.CNNClassifier(vocab_size, num_classes, **cfg)
  else:
    module = networks.TransformerEncoder(vocab_size, out_dim, max_len, causal=(kind == "lm"), **cfg)
  extras = dict(vocab_size=vocab_size, max_len=max_len, **cfg)
  return from_flax(
    module,
    name=name,
    kind=kind,
    num_classes=out_dim,
    dropout_rate=float(cfg.get("dropout_rate", 0.0)),
    extras=extras,
  )


__all__ = [
  "FLAX_METHODS",
  "MODEL_NAMES",
  "build_model",
  "check_flax_module",
  "check_model",
  "default_model_config",
  "from_flax",
  "validate_model",
]
