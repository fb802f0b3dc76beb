"""Evaluation: weighted metric sums over fixed-shape batches, reduced on the host."""

import functools
import math
from collections.abc import Callable, Mapping

import jax
import numpy as np

from trustml.data import batching
from trustml.models import contract


@functools.lru_cache(maxsize=32)
def _jitted_sums(eval_metrics: Callable) -> Callable:
  return jax.jit(eval_metrics)


def reduce_sums(sums: Mapping[str, float]) -> dict[str, float]:
  """Turns metric sums into means: ``loss``, ``accuracy`` and, for LMs, ``perplexity``."""
  count = max(float(sums.get("count", 0.0)), 1e-12)
  out = {"loss": float(sums["loss_sum"]) / count, "num_examples": float(sums.get("count", 0.0))}
  if "correct" in sums:
    out["accuracy"] = float(sums["correct"]) / count
  if "token_nll_sum" in sums:
    tokens = max(float(sums["token_count"]), 1e-12)
    out["token_nll"] = float(sums["token_nll_sum"]) / tokens
    out["perplexity"] = math.exp(min(out["token_nll"], 700.0))
    out["token_accuracy"] = float(sums["token_correct"]) / tokens
  return out


def evaluate(
  model: contract.Model, params, arrays: Mapping[str, np.ndarray], batch_size: int = 256
) -> dict[str, float]:
  """Evaluates ``model`` on all rows of encoded ``arrays``.

  Args:
    model: the Model.
    params: its parameters.
    arrays: encoded split (see :func:`trustml.data.batching.encode_split`).
    batch_size: evaluation batch size (static; the last batch is padded with weight 0).

  Returns:
    ``loss`` and ``accuracy`` (classifiers) or ``perplexity`` (LMs) and ``num_examples``.
  """
  fn = _jitted_sums(model.eval_metrics)
  totals: dict[str, float] = {}
  for batch in batching.eval_batches(arrays, batch_size):
    sums = jax.device_get(fn(params, batch))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return reduce_sums(totals)


def predict_logits(
  model: contract.Model, params, arrays: Mapping[str, np.ndarray], batch_size: int = 256
) -> np.ndarray:
  """Logits for every row of ``arrays`` (padding rows dropped)."""
  fn = _jitted_apply(model.apply)
  n = batching.num_examples(arrays)
  outs = [np.asarray(fn(params, b)) for b in batching.eval_batches(arrays, batch_size)]
  return np.concatenate(outs, 0)[:n] if outs else np.zeros((0,))


@functools.lru_cache(maxsize=32)
def _jitted_apply(apply: Callable) -> Callable:
  return jax.jit(lambda p, b: apply(p, b))


__all__ = ["evaluate", "predict_logits", "reduce_sums"]
