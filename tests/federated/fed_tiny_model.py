"""A tiny hand-built linear softmax classifier in the Model contract, and synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np

from trustml.models import contract

VOCAB, DIM, CLASSES, SEQ = 20, 4, 3, 5


def _pooled(params, batch):
  emb = params["embed"]["embedding"][batch["tokens"]]
  m = batch["mask"].astype(emb.dtype)[..., None]
  return (emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def _apply(params, batch, *, rng=None, train=False):
  del rng, train
  return _pooled(params, batch) @ params["head"]["kernel"] + params["head"]["bias"]


def _from_emb(params, emb, batch, *, rng=None, train=False):
  del rng, train
  m = batch["mask"].astype(emb.dtype)[..., None]
  pooled = (emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
  return pooled @ params["head"]["kernel"] + params["head"]["bias"]


def model() -> contract.Model:
  """The tiny linear classifier (float32 or float64 depending on the params given)."""

  def init(rng, batch):
    del batch
    k1, k2 = jax.random.split(rng)
    return {
      "embed": {"embedding": 0.5 * jax.random.normal(k1, (VOCAB, DIM))},
      "head": {"kernel": 0.5 * jax.random.normal(k2, (DIM, CLASSES)), "bias": jnp.zeros(CLASSES)},
    }

  return contract.Model(
    name="tiny",
    kind="classifier",
    num_classes=CLASSES,
    init=init,
    apply=_apply,
    per_example_loss=lambda p, b, rng=None: contract.classifier_losses(_apply(p, b), b),
    embed=lambda p, b: p["embed"]["embedding"][b["tokens"]],
    apply_from_embeddings=_from_emb,
    pooled=_pooled,
    eval_metrics=lambda p, b: contract.classifier_metric_sums(_apply(p, b), b),
    embedding_path=("embed", "embedding"),
  )


def arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Synthetic encoded rows whose label depends on the tokens."""
  gen = np.random.default_rng(seed)
  tokens = gen.integers(1, VOCAB, size=(n, SEQ)).astype(np.int32)
  mask = np.ones((n, SEQ), bool)
  mask[:, -1] = gen.uniform(size=n) < 0.5
  label = (tokens[:, 0] % CLASSES).astype(np.int32)
  return {"tokens": tokens, "mask": mask, "label": label, "weight": np.ones(n, np.float32)}
