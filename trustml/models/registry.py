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


def validate_model_config(cfg: Mapping[str, Any]) -> None:
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


def from_flax(
  module: nn.Module,
  *,
  name: str,
  kind: str,
  num_classes: int,
  dropout_rate: float = 0.0,
  extras: Mapping[str, Any] | None = None,
) -> contract.Model:
  """Wraps a Flax Linen network with ``embed_tokens``/``from_embeddings``/``pool`` into a Model.

  Args:
    module: the network (see :mod:`trustml.models.networks`).
    name: model name.
    kind: ``"classifier"`` or ``"lm"``.
    num_classes: classes (vocabulary size for an LM).
    dropout_rate: the network's dropout rate (``rng`` is required in training mode when > 0).
    extras: static facts recorded on the Model.

  Returns:
    The Model bundle.
  """

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
    embedding_path=("embed", "embedding"),
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
  validate_model_config(model_config)
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
  "MODEL_NAMES",
  "build_model",
  "default_model_config",
  "from_flax",
  "validate_model_config",
]
