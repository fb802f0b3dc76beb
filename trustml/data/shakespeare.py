"""Tiny Shakespeare (char-rnn ``input.txt``) parsed into speeches with speaker names.

``input.txt`` separates speeches by one blank line; each speech starts with a ``NAME:`` line
followed by verse or prose. Splitting on ``"\\n\\n"`` gives 7,222 speeches by 309 distinct
speaker strings. Kept speakers (``min_speeches``) are indexed by first appearance
(``user_id`` = that index, contiguous from 0), so
federated clients are speaker strings (not LEAF's (play, role) pairs: play boundaries are not
marked, and e.g. ``GLOUCESTER`` may be several characters). 125 speeches have an empty body
(a name line directly followed by a blank line in the source); they are kept by default so
counts match the file, and ``drop_empty=True`` removes them before splitting.

Per-speaker split: each speaker's speeches stay in file order and the last
``floor(test_fraction * n)`` of them (``test_fraction=0.1``) go to ``test``; speakers with
fewer than ``1 / test_fraction`` speeches are train-only. Columns: ``text`` (the speech without
its name line, lines joined by ``"\\n"``), ``speaker``, ``user_id``, ``label`` (-1),
``gender`` (-1).

The built-in TFDS ``tiny_shakespeare`` (same file cut into 90/5/5 character ranges, one
example per split) is in :mod:`trustml.data.tfds_sources`.
"""

import os
import pathlib

import numpy as np

from trustml.core import validation
from trustml.data import dataset

LOCAL_SUBDIR = "tiny_shakespeare"
FILE_NAME = "input.txt"
URL = (
  "https://raw.githubusercontent.com/karpathy/char-rnn/"
  "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt"
)


def parse_speeches(raw: str) -> list[tuple[str, str]]:
  """Splits the play text into ``(speaker, speech)`` pairs.

  Args:
    raw: the contents of ``input.txt``.

  Returns:
    Pairs in file order.

  Raises:
    ValueError: if a block does not start with a ``NAME:`` line.
  """
  speeches = []
  for i, block in enumerate(raw.strip("\n").split("\n\n")):
    head, _, body = block.strip("\n").partition("\n")
    if not head.endswith(":"):
      raise ValueError(f"speech {i} does not start with a 'NAME:' line: {block[:60]!r}")
    speeches.append((head[:-1], body))
  return speeches


def load(
  folder: str | os.PathLike,
  *,
  test_fraction: float = 0.1,
  min_speeches: int = 1,
  drop_empty: bool = False,
) -> dataset.TextDataset:
  """Loads Tiny Shakespeare speeches split per speaker.

  Args:
    folder: the local ``tiny_shakespeare`` folder holding ``input.txt``.
    test_fraction: fraction of each speaker's last speeches held out to ``test``, in [0, 1).
    min_speeches: keep only speakers with at least this many speeches (>= 1).
    drop_empty: drop speeches with an empty body first.

  Returns:
    A TextDataset (splits ``train``/``test``, no label names: LM text).

  Raises:
    ConfigError: for an invalid ``test_fraction`` or ``min_speeches``.
  """
  validation.in_range("data.test_fraction", test_fraction, 0, 1, low_inclusive=True)
  validation.positive_int("data.min_speeches", min_speeches)
  raw = (pathlib.Path(folder) / FILE_NAME).read_text("utf-8")
  speeches = parse_speeches(raw)
  if drop_empty:
    speeches = [(s, t) for s, t in speeches if t.strip()]
  all_names = [s for s, _ in speeches]
  totals = {}
  for s in all_names:
    totals[s] = totals.get(s, 0) + 1
  speeches = [(s, t) for s, t in speeches if totals[s] >= min_speeches]
  names = np.array([s for s, _ in speeches], object)
  texts = np.array([t for _, t in speeches], object)
  order = {}  # kept speakers, indexed by first appearance
  for s in names:
    order.setdefault(s, len(order))
  uid = np.array([order[s] for s in names], np.int64)
  counts = np.bincount(uid, minlength=len(order))
  position = np.zeros(len(uid), np.int64)
  seen = np.zeros(len(order), np.int64)
  for i, u in enumerate(uid):
    position[i] = seen[u]
    seen[u] += 1
  n_test = np.floor(test_fraction * counts).astype(np.int64)
  is_test = position >= (counts - n_test)[uid]
  columns = {
    "text": texts,
    "speaker": names,
    "user_id": uid.astype(np.int32),
    "label": np.full(len(uid), -1, np.int32),
    "gender": np.full(len(uid), -1, np.int32),
  }
  splits = {
    "train": {k: v[~is_test] for k, v in columns.items()},
    "test": {k: v[is_test] for k, v in columns.items()},
  }
  return dataset.TextDataset(
    name="tiny_shakespeare",
    splits=splits,
    metadata={
      "source": f"{URL} (local copy {folder})",
      "num_speeches": len(all_names),
      "num_speakers": len(totals),
      "num_speakers_kept": len(order),
      "test_fraction": test_fraction,
      "min_speeches": min_speeches,
      "drop_empty": drop_empty,
    },
  )


__all__ = ["FILE_NAME", "LOCAL_SUBDIR", "URL", "load", "parse_speeches"]
