"""A tiny position-aware embedding classifier in the Model contract, for attack tests.

Kept here (not in trustml.models) so the attack tests do not depend on the spine's model zoo.
"""

import flax.linen as nn
import jax.numpy as jnp

from trustml.models import contract


class _Bag(nn.Module):
  vocab_size: int
  dim: int
  hidden: int
  num_classes: int
  max_len: int

  def setup(self):
    self.embed_layer = nn.Embed(self.vocab_size, self.dim, name="embed")
    self.pos = self.param("pos", nn.initializers.normal(0.1), (self.max_len, self.dim))
    self.hidden_layer = nn.Dense(self.hidden, name="hidden")
    self.out_layer = nn.Dense(self.num_classes, name="out")

  def embed(self, tokens):
    return self.embed_layer(tokens) + self.pos[: tokens.shape[1]]

  def from_embeddings(self, emb, mask):
    m = mask.astype(emb.dtype)[..., None]
    flat = (emb * m).reshape(emb.shape[0], -1)  # position-aware: concatenation, not a bag
    return self.out_layer(nn.relu(self.hidden_layer(flat)))

  def __call__(self, tokens, mask):
    return self.from_embeddings(self.embed(tokens), mask)


def tiny_model(
  vocab_size: int = 32, num_classes: int = 3, dim: int = 16, hidden: int = 32, max_len: int = 8
) -> contract.Model:
  """Builds the tiny position-aware classifier (token + position embeddings, concat, MLP)."""
  net = _Bag(vocab_size, dim, hidden, num_classes, max_len)

  def init(rng, batch):
    return net.init(rng, batch["tokens"], batch["mask"])["params"]

  def apply(params, batch, *, rng=None, train=False):
    del rng, train
    return net.apply({"params": params}, batch["tokens"], batch["mask"])

  def embed(params, batch):
    return net.apply({"params": params}, batch["tokens"], method=_Bag.embed)

  def apply_from_embeddings(params, emb, batch, *, rng=None, train=False):
    del rng, train
    return net.apply({"params": params}, emb, batch["mask"], method=_Bag.from_embeddings)

  def per_example_loss(params, batch, rng=None):
    del rng
    return contract.classifier_losses(apply(params, batch), batch)

  def pooled(params, batch):
    e = embed(params, batch)
    m = batch["mask"].astype(e.dtype)[..., None]
    return (e * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

  def eval_metrics(params, batch):
    return contract.classifier_metric_sums(apply(params, batch), batch)

  return contract.Model(
    name="tiny_bag",
    kind="classifier",
    num_classes=num_classes,
    init=init,
    apply=apply,
    per_example_loss=per_example_loss,
    embed=embed,
    apply_from_embeddings=apply_from_embeddings,
    pooled=pooled,
    eval_metrics=eval_metrics,
    embedding_path=("embed", "embedding"),
  )


__all__ = ["tiny_model"]
