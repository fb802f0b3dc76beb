"""Flax Linen building blocks shared by the NLU models.

Everything parametrised is a standard ``nn.Dense``, ``nn.Embed``, ``nn.LayerNorm`` or
``nn.Conv``: attention uses plain ``nn.Dense`` query/key/value/output projections with
``[D, D]`` kernels, so per-layer rules (ghost norms in :mod:`trustml.privacy`) can intercept
these four layer types with ``flax.linen.intercept_methods`` and cover every parameter.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over the time axis of ``x`` ``[B, T, D]`` counting only ``mask`` ``[B, T]`` positions."""
  m = mask.astype(x.dtype)[..., None]
  return (x * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Max over the time axis counting only valid positions (0 where a row has none)."""
  neg = jnp.finfo(x.dtype).min
  out = jnp.where(mask[..., None], x, neg).max(1)
  return jnp.where(mask.any(1, keepdims=True), out, 0.0)


def masked_last(x: jax.Array, mask: jax.Array) -> jax.Array:
  """The state at each row's last valid position of ``x`` ``[B, T, D]`` (row 0 if none is).

  Valid positions need not be contiguous: the last ``True`` of ``mask`` ``[B, T]`` is taken.
  """
  t = mask.shape[1]
  last = jnp.max(jnp.where(mask, jnp.arange(t)[None, :], 0), axis=1)
  return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]


def windows(x: jax.Array, width: int, causal: bool) -> jax.Array:
  """Each position's window of ``width`` neighbours, concatenated: ``[B, T, D] -> [B, T, width·D]``.

  A Dense layer on the result is a 1-D convolution with zero padding (im2col). Causal windows
  cover positions ``t − width + 1 … t``; centred ones ``t − ⌊(width − 1)/2⌋ … t + ⌊width/2⌋``
  (nn.Conv's "SAME"). Out-of-range neighbours are zeros.
  """
  t = x.shape[1]
  offsets = range(1 - width, 1) if causal else range(-((width - 1) // 2), width - (width - 1) // 2)
  left, right = max(0, -min(offsets)), max(0, max(offsets))
  padded = jnp.pad(x, ((0, 0), (left, right), (0, 0)))
  return jnp.concatenate([padded[:, left + o : left + o + t] for o in offsets], axis=-1)


class SelfAttention(nn.Module):
  """Multi-head self-attention with plain Dense projections and a padding (and causal) mask."""

  num_heads: int
  dropout_rate: float = 0.0
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    b, t, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"model.embed_dim={d} must be divisible by model.num_heads={self.num_heads}")
    h = self.num_heads
    q = nn.Dense(d, name="query")(x).reshape(b, t, h, d // h)
    k = nn.Dense(d, name="key")(x).reshape(b, t, h, d // h)
    v = nn.Dense(d, name="value")(x).reshape(b, t, h, d // h)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // h).astype(x.dtype)
    allowed = mask[:, None, None, :]
    if self.causal:
      allowed = allowed & jnp.tril(jnp.ones((t, t), bool))[None, None]
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=not train)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
    return nn.Dense(d, name="out")(out)


class EncoderBlock(nn.Module):
  """A pre-LayerNorm transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    y = nn.LayerNorm(name="ln_attn")(x)
    y = SelfAttention(self.num_heads, self.dropout_rate, self.causal, name="attn")(y, mask, train)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = nn.LayerNorm(name="ln_mlp")(x)
    y = nn.Dense(self.mlp_dim, name="mlp_in")(y)
    y = nn.gelu(y)
    y = nn.Dense(x.shape[-1], name="mlp_out")(y)
    return x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)


__all__ = [
  "EncoderBlock",
  "SelfAttention",
  "masked_last",
  "masked_max",
  "masked_mean",
  "windows",
]
