"""Flax Linen text networks: bag of embeddings, 1-D CNN, transformer encoder, causal LM.

Each network exposes three methods so the Model contract can differentiate with respect to
token embeddings:

* ``embed_tokens(tokens) -> [B, T, D]``
* ``from_embeddings(emb, mask, train) -> logits``
* ``pool(emb, mask, train) -> [B, H]`` (the representation before the output head)
* ``token_states(emb, mask, train) -> [B, T, H]`` (per-position vectors before pooling,
  padding positions zeroed; token-level CEAT)

``__call__(tokens, mask, train)`` is ``from_embeddings(embed_tokens(tokens), mask, train)``.
The token table is always the submodule ``embed`` (params path ``("embed", "embedding")``).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from trustml.models import layers


class BagOfEmbeddings(nn.Module):
  """Mean-pooled bag of embeddings followed by an MLP."""

  vocab_size: int
  num_classes: int
  embed_dim: int = 64
  hidden_dim: int = 128
  dropout_rate: float = 0.0

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, name="embed")
    self.hidden = nn.Dense(self.hidden_dim, name="hidden")
    self.head = nn.Dense(self.num_classes, name="head")
    self.dropout = nn.Dropout(self.dropout_rate)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    return self.embed(tokens)

  def token_states(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    del train  # A bag has no context: a token's state is its embedding.
    return emb * mask[..., None].astype(emb.dtype)

  def pool(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    x = layers.masked_mean(emb, mask)
    x = nn.relu(self.hidden(x))
    return self.dropout(x, deterministic=not train)

  def from_embeddings(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    return self.head(self.pool(emb, mask, train))

  def __call__(self, tokens: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    return self.from_embeddings(self.embed_tokens(tokens), mask, train)


class CNNClassifier(nn.Module):
  """1-D convolutions of several widths, masked max-pooling over time, linear head (Kim 2014)."""

  vocab_size: int
  num_classes: int
  embed_dim: int = 64
  num_filters: int = 64
  kernel_sizes: Sequence[int] = (3, 4, 5)
  dropout_rate: float = 0.0

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, name="embed")
    self.convs = [
      nn.Conv(self.num_filters, (k,), padding="SAME", name=f"conv{k}") for k in self.kernel_sizes
    ]
    self.head = nn.Dense(self.num_classes, name="head")
    self.dropout = nn.Dropout(self.dropout_rate)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    return self.embed(tokens)

  def token_states(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    del train  # The convolution features at each position (max-pooled by ``pool``).
    m = mask[..., None].astype(emb.dtype)
    return jnp.concatenate([nn.relu(conv(emb * m)) for conv in self.convs], -1) * m

  def pool(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    emb = emb * mask[..., None].astype(emb.dtype)
    feats = [layers.masked_max(nn.relu(conv(emb)), mask) for conv in self.convs]
    return self.dropout(jnp.concatenate(feats, -1), deterministic=not train)

  def from_embeddings(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    return self.head(self.pool(emb, mask, train))

  def __call__(self, tokens: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    return self.from_embeddings(self.embed_tokens(tokens), mask, train)


class TransformerEncoder(nn.Module):
  """Pre-LN transformer encoder, learned positions, padding mask, pooled states, linear head.

  ``pooling`` picks the sequence representation of the classifier: ``"mean"`` (masked mean of
  the final states), ``"last"`` (the state at the last non-padding position) or ``"max"``
  (masked max over positions per feature, as in a Kim-style CNN: a feature fires wherever its
  pattern occurs). With
  ``causal_attention`` every position attends only to itself and earlier positions, so each
  state summarises an ordered prefix; ``causal_attention=True`` with ``pooling="last"`` is a
  GPT-style classifier. ``causal`` (the language-model head) implies causal attention.
  ``conv_kernel > 0`` adds a convolutional stem: a width-``conv_kernel`` 1-D convolution of the
  (padding-masked) token embeddings, through GELU, added to them before the positions, so the
  first block already sees local n-gram features (order within a window); with causal
  attention the stem is causal too (each window ends at its own position). It is computed as
  a Dense over :func:`trustml.models.layers.windows`, so DP ghost norms treat it as a Dense.
  """

  vocab_size: int
  num_classes: int
  max_len: int
  embed_dim: int = 128
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  dropout_rate: float = 0.0
  causal: bool = False
  pooling: str = "mean"
  causal_attention: bool = False
  conv_kernel: int = 0

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, name="embed")
    self.pos_embed = nn.Embed(self.max_len, self.embed_dim, name="pos_embed")
    self.blocks = [
      layers.EncoderBlock(
        self.num_heads,
        self.mlp_dim,
        self.dropout_rate,
        self.causal or self.causal_attention,
        name=f"block{i}",
      )
      for i in range(self.num_layers)
    ]
    if self.conv_kernel:
      # A 1-D convolution written as a Dense over each position's window of embeddings (the
      # same function and init as nn.Conv) so eDP-SGD's ghost norms cover it as a Dense layer.
      self.stem = nn.Dense(self.embed_dim, name="stem")
    self.final_ln = nn.LayerNorm(name="final_ln")
    self.dropout = nn.Dropout(self.dropout_rate)
    if not self.causal:
      self.head = nn.Dense(self.num_classes, name="head")

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    return self.embed(tokens)

  def encode(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    t = emb.shape[1]
    if self.conv_kernel:
      masked = emb * mask[..., None].astype(emb.dtype)
      causal = self.causal or self.causal_attention  # Then no position sees later tokens.
      emb = emb + nn.gelu(self.stem(layers.windows(masked, self.conv_kernel, causal)))
    # Per-example position ids (not a broadcast [T, D] lookup) so ghost-norm DP rules see a
    # batch axis on every parameterised call (trustml.privacy.ghost); numerically identical.
    x = emb + self.pos_embed(jnp.broadcast_to(jnp.arange(t), emb.shape[:2]))
    x = self.dropout(x, deterministic=not train)
    for block in self.blocks:
      x = block(x, mask, train)
    return self.final_ln(x)

  def token_states(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    return self.encode(emb, mask, train) * mask[..., None].astype(emb.dtype)

  def pool(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    states = self.encode(emb, mask, train)
    if self.pooling == "last":
      return layers.masked_last(states, mask)
    if self.pooling == "max":
      return layers.masked_max(states, mask)
    return layers.masked_mean(states, mask)

  def from_embeddings(self, emb: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    if self.causal:
      return self.embed.attend(self.encode(emb, mask, train))
    return self.head(self.pool(emb, mask, train))

  def __call__(self, tokens: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    return self.from_embeddings(self.embed_tokens(tokens), mask, train)


__all__ = ["BagOfEmbeddings", "CNNClassifier", "TransformerEncoder"]
