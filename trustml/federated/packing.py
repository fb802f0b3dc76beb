"""Packing sampled clients into fixed-shape ``[clients, steps, batch, ...]`` arrays.

Each client runs ``local_epochs`` passes over its (shuffled) rows in batches of ``batch_size``,
at most ``max_steps`` steps; the last batch of a pass is padded with weight-0 rows. The packed
step count ``S`` is the largest client's count rounded up to a *bucket* (the next power of two,
or a multiple of ``step_bucket``), so rounds with similar client sizes share one compiled
program and padding stays below 2x. Each client carries a ``step_mask`` (which of its ``S``
steps are real) and each row a ``weight`` (0 for padding). The client count is padded to a
multiple of ``client_multiple`` (the device count) with zero-weight clients, which take no
steps and contribute nothing.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from trustml.core import rng as rng_lib
from trustml.core import validation


def client_steps(num_examples: int, batch_size: int, local_epochs: float, max_steps: int) -> int:
  """Local steps of a client with ``num_examples`` rows (0 for an empty client)."""
  if num_examples == 0:
    return 0
  per_epoch = -(-num_examples // batch_size)
  return int(min(max(1, round(per_epoch * local_epochs)), max_steps))


def bucket(steps: int, step_bucket: int = 0) -> int:
  """Rounds a step count up to its bucket: next power of two (``step_bucket=0``) or a multiple."""
  steps = max(int(steps), 1)
  if step_bucket > 0:
    return -(-steps // step_bucket) * step_bucket
  return 1 << (steps - 1).bit_length()


def size_buckets(sizes: np.ndarray, batch_size: int) -> np.ndarray:
  """Bucket id (log2 of the power-of-two step bucket) of each client, for stratified rounds."""
  steps = np.maximum(1, -(-np.asarray(sizes) // batch_size))
  return np.ceil(np.log2(steps)).astype(np.int64)


def _client_order(
  rows: np.ndarray, steps: int, batch_size: int, gen: np.random.Generator
) -> np.ndarray:
  """Row order for ``steps`` batches: shuffled passes, each pass padded to whole batches (-1)."""
  per_epoch = -(-len(rows) // batch_size)
  order = []
  while len(order) < steps * batch_size:
    perm = gen.permutation(rows)
    pad = per_epoch * batch_size - len(rows)
    order.extend(perm.tolist() + [-1] * pad)
  return np.asarray(order[: steps * batch_size], dtype=np.int64)


def pack(
  arrays: Mapping[str, np.ndarray],
  client_rows: Sequence[np.ndarray],
  *,
  batch_size: int,
  local_epochs: float = 1.0,
  max_steps: int = 1 << 30,
  weights: np.ndarray | None = None,
  client_ids: np.ndarray | None = None,
  client_multiple: int = 1,
  num_clients: int | None = None,
  num_steps: int | None = None,
  step_bucket: int = 0,
  seed: int = 0,
  round_index: int = 0,
  keys: Sequence[str] = ("tokens", "mask", "label", "weight"),
) -> dict[str, object]:
  """Packs the rows of the selected clients into fixed-shape arrays.

  Args:
    arrays: encoded split (``tokens``, ``mask``, ``label``, ``weight`` ... with leading ``[N]``).
    client_rows: row indices of each selected client.
    batch_size: local batch size ``B``.
    local_epochs: passes over each client's data (fractional allowed).
    max_steps: cap on a client's local steps.
    weights: aggregation weight per client (default: its number of examples).
    client_ids: id per client (used to derive its dropout keys); default ``0..C-1``.
    client_multiple: pad the client count to a multiple of this (the device count).
    num_clients: pad to exactly this many clients (before the multiple), e.g. a Poisson cap.
    num_steps: exact step count ``S`` (default: bucketed max over clients).
    step_bucket: 0 for power-of-two step buckets, else a multiple.
    seed: run seed (row order).
    round_index: round counter (row order).
    keys: which arrays to pack.

  Returns:
    ``{"batch": {k: [C, S, B, ...]}, "step_mask": float32 [C, S], "weight": float32 [C],
    "num_examples": float32 [C], "client_id": int32 [C], "num_real_clients": int}``.

  Raises:
    ConfigError: on an empty client, a non-positive batch size or too many clients.
  """
  validation.positive_int("federated.batch_size", batch_size)
  validation.positive_int("packing.client_multiple", client_multiple)
  validation.positive("federated.local_epochs", local_epochs)
  rows = [np.asarray(r, dtype=np.int64) for r in client_rows]
  for i, r in enumerate(rows):
    if len(r) == 0:
      raise validation.ConfigError(f"client {i} is empty: every sampled client needs >= 1 example")
  real = len(rows)
  steps = [client_steps(len(r), batch_size, local_epochs, max_steps) for r in rows]
  s_max = num_steps if num_steps is not None else bucket(max(steps, default=1), step_bucket)
  steps = [min(s, s_max) for s in steps]
  total = max(real, num_clients or 0)
  total = max(client_multiple, -(-total // client_multiple) * client_multiple)
  if num_clients is not None and real > num_clients:
    raise validation.ConfigError(f"{real} clients do not fit the packed capacity {num_clients}")
  ids = np.arange(real) if client_ids is None else np.asarray(client_ids)
  w = (
    np.array([len(r) for r in rows], np.float32)
    if weights is None
    else np.asarray(weights, np.float32)
  )

  index = np.full((total, s_max * batch_size), -1, dtype=np.int64)
  for c, r in enumerate(rows):
    gen = rng_lib.numpy_rng(seed, "packing", round_index * 1_000_003 + int(ids[c]))
    index[c, : steps[c] * batch_size] = _client_order(r, steps[c], batch_size, gen)
  valid = index >= 0
  safe = np.where(valid, index, 0)
  batch = {}
  for k in keys:
    if k not in arrays:
      continue
    v = np.asarray(arrays[k])[safe]
    if k == "weight":
      v = np.where(valid, v, 0).astype(np.float32)
    batch[k] = v.reshape((total, s_max, batch_size) + v.shape[2:])
  if "weight" not in batch:
    batch["weight"] = valid.astype(np.float32).reshape(total, s_max, batch_size)
  step_mask = np.zeros((total, s_max), np.float32)
  for c, s in enumerate(steps):
    step_mask[c, :s] = 1.0
  out_w = np.zeros(total, np.float32)
  out_w[:real] = w
  n = np.zeros(total, np.float32)
  n[:real] = [len(r) for r in rows]
  cid = np.zeros(total, np.int32)
  cid[:real] = ids
  return {
    "batch": batch,
    "step_mask": step_mask,
    "weight": out_w,
    "num_examples": n,
    "client_id": cid,
    "num_real_clients": real,
  }


def device_arrays(packed: Mapping[str, object]) -> dict[str, object]:
  """The array part of a packed round (drops host-only fields such as ``num_real_clients``)."""
  return {k: v for k, v in packed.items() if k != "num_real_clients"}


__all__ = ["bucket", "client_steps", "device_arrays", "pack", "size_buckets"]
