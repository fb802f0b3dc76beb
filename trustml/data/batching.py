"""Fixed-shape batches: encoding, padding, shuffled and Poisson-sampled batches.

Every batch has a static shape so nothing recompiles: ``tokens`` int32 ``[B, T]``, ``mask``
bool ``[B, T]``, ``label`` int32 ``[B]``, ``weight`` float32 ``[B]`` (0.0 for padding rows),
``user_id`` and ``group`` int32 ``[B]`` and ``index`` int32 ``[B]`` (row id, -1 for padding).

Data order is a pure function of ``(seed, step)``: a resumed run sees the same batches.
"""

from collections.abc import Iterator, Mapping

import numpy as np

from trustml.core import rng as rng_lib
from trustml.core import validation

Arrays = Mapping[str, np.ndarray]


def encode_split(
  columns: Mapping[str, np.ndarray], tokenizer, max_len: int, *, lm: bool = False
) -> dict[str, np.ndarray]:
  """Tokenizes one split into padded arrays.

  Args:
    columns: a split of a :class:`trustml.data.dataset.TextDataset`.
    tokenizer: a tokenizer from :mod:`trustml.data.tokenizers`.
    max_len: static sequence length ``T``.
    lm: language-model encoding (``BOS`` + text + ``EOS``).

  Returns:
    Arrays ``tokens``, ``mask``, ``label``, ``weight``, ``user_id``, ``group``, ``index``.
  """
  texts = [str(t) for t in columns["text"]]
  n = len(texts)
  tokens, mask = tokenizer.encode_batch(texts, max_len, add_bos=lm, add_eos=lm)

  def col(name: str, default: int) -> np.ndarray:
    if name in columns:
      return np.asarray(columns[name]).astype(np.int32)
    return np.full((n,), default, np.int32)

  return {
    "tokens": tokens,
    "mask": mask,
    "label": col("label", 0) if not lm else col("label", -1),
    "weight": np.ones((n,), np.float32),
    "user_id": col("user_id", -1),
    "group": col("gender", -1),
    "index": np.arange(n, dtype=np.int32),
  }


def num_examples(arrays: Arrays) -> int:
  """Number of rows of encoded arrays."""
  return int(arrays["tokens"].shape[0])


def take_padded(arrays: Arrays, index: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
  """Gathers rows ``index`` and pads to ``batch_size`` rows with weight-0 examples.

  Args:
    arrays: encoded arrays.
    index: row ids, at most ``batch_size`` of them.
    batch_size: static batch size.

  Returns:
    A fixed-shape batch; padding rows have ``weight == 0``, ``mask == False`` and ``index == -1``.
  """
  index = np.asarray(index, np.int64)
  if index.shape[0] > batch_size:
    raise ValueError(f"{index.shape[0]} rows do not fit batch_size={batch_size}")
  pad = batch_size - index.shape[0]
  out = {}
  for k, v in arrays.items():
    rows = v[index]
    if pad:
      rows = np.concatenate([rows, np.zeros((pad,) + v.shape[1:], v.dtype)], axis=0)
    out[k] = rows
  if pad:
    out["weight"][-pad:] = 0.0
    out["index"][-pad:] = -1
    if "group" in out:
      out["group"][-pad:] = -1
    if "user_id" in out:
      out["user_id"][-pad:] = -1
  return out


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The row order of one epoch, a pure function of ``(seed, epoch)``."""
  return rng_lib.numpy_rng(seed, "data", epoch).permutation(n)


def shuffled_batch(arrays: Arrays, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
  """The batch of training step ``step`` under shuffling without replacement.

  Batches tile a stream of per-epoch permutations, so a batch may straddle two epochs;
  every example is seen once per epoch.

  Args:
    arrays: encoded training arrays.
    batch_size: examples per batch.
    seed: data seed.
    step: global step (0-based).

  Returns:
    A full batch (no padding rows).
  """
  n = num_examples(arrays)
  validation.positive_int("batch_size", batch_size)
  start = step * batch_size
  idx = []
  while len(idx) < batch_size:
    epoch, offset = divmod(start, n)
    perm = epoch_permutation(n, seed, epoch)
    take = perm[offset : offset + batch_size - len(idx)]
    idx.extend(take.tolist())
    start += len(take)
  return take_padded(arrays, np.asarray(idx), batch_size)


def poisson_batch(
  arrays: Arrays, sampling_rate: float, max_batch_size: int, seed: int, step: int
) -> tuple[dict[str, np.ndarray], int, int]:
  """A Poisson-sampled batch padded to a fixed size.

  Each example is included independently with probability ``sampling_rate``, from a generator
  seeded by ``(seed, "sampling", step)``. If more than ``max_batch_size`` are drawn, a uniformly
  random subset of ``max_batch_size`` is kept; callers must account for truncation (the
  privacy engine reports it).

  Args:
    arrays: encoded training arrays.
    sampling_rate: inclusion probability ``q`` in (0, 1].
    max_batch_size: static batch size.
    seed: run seed.
    step: global step.

  Returns:
    ``(batch, num_sampled, num_truncated)``.
  """
  validation.in_range("sampling_rate", sampling_rate, 0.0, 1.0, high_inclusive=True)
  validation.positive_int("max_batch_size", max_batch_size)
  n = num_examples(arrays)
  gen = rng_lib.numpy_rng(seed, "sampling", step)
  chosen = np.flatnonzero(gen.random(n) < sampling_rate)
  truncated = max(0, chosen.shape[0] - max_batch_size)
  if truncated:
    chosen = np.sort(gen.choice(chosen, size=max_batch_size, replace=False))
  return take_padded(arrays, chosen, max_batch_size), int(chosen.shape[0] + truncated), truncated


def eval_batches(arrays: Arrays, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Iterates over all rows in order, in fixed-shape padded batches."""
  n = num_examples(arrays)
  for start in range(0, n, batch_size):
    yield take_padded(arrays, np.arange(start, min(start + batch_size, n)), batch_size)


__all__ = [
  "encode_split",
  "epoch_permutation",
  "eval_batches",
  "num_examples",
  "poisson_batch",
  "shuffled_batch",
  "take_padded",
]
