"""Hand-built linear classifiers under the Model contract (closed-form oracles for tests)."""

import jax
import jax.numpy as jnp
import numpy as np

from trustml.models import contract


def linear_model(num_classes: int) -> contract.Model:
  """logits = mean_t(mask_t * E[tokens_t]) @ W + b."""

  def embed(params, batch):
    return params["embed"]["embedding"][batch["tokens"]]

  def from_emb(params, emb, batch, *, rng=None, train=False):
    del rng, train
    m = batch["mask"].astype(jnp.float32)[..., None]
    pooled = (emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return pooled @ params["W"] + params["b"]

  def apply(params, batch, *, rng=None, train=False):
    return from_emb(params, embed(params, batch), batch)

  def pooled(params, batch):
    m = batch["mask"].astype(jnp.float32)[..., None]
    return (embed(params, batch) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

  return contract.Model(
    name="linear",
    kind="classifier",
    num_classes=num_classes,
    init=lambda rng, batch: None,
    apply=apply,
    per_example_loss=lambda p, b, rng=None: contract.classifier_losses(apply(p, b), b),
    embed=embed,
    apply_from_embeddings=from_emb,
    pooled=pooled,
    eval_metrics=lambda p, b: contract.classifier_metric_sums(apply(p, b), b),
    embedding_path=("embed", "embedding"),
  )


def linear_params(seed: int, vocab: int, dim: int, num_classes: int) -> dict:
  rng = np.random.default_rng(seed)
  return {
    "embed": {"embedding": jnp.asarray(rng.normal(size=(vocab, dim)), jnp.float32)},
    "W": jnp.asarray(rng.normal(size=(dim, num_classes)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=(num_classes,)), jnp.float32),
  }


def to_numpy(params) -> dict:
  return jax.tree.map(lambda a: np.asarray(a, np.float64), params)
