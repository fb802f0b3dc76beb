"""The in-memory text dataset every source returns.

A :class:`TextDataset` holds raw text columns per split; tokenization and batching happen
later (:mod:`trustml.data.tokenizers`, :mod:`trustml.data.batching`). Columns are NumPy
arrays of equal length per split:

* ``text``: object array of ``str`` (always present).
* ``label``: int32 class id (classifiers; absent or -1 for pure LM text).
* ``user_id``: int32 natural client id (-1 where the data has no users).
* ``gender``: int32 protected attribute (0 = male, 1 = female, -1 = unknown).
* ``groups``: object array of ``tuple[str, ...]`` (e.g. HateXplain target communities).
* any other source-specific column (``slots``, ``speaker``, ``prompt_group`` ...).
"""

import dataclasses
from collections.abc import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextDataset:
  """Raw text splits of one dataset.

  Attributes:
    name: dataset name (``"synthetic"``, ``"snips"``, ...).
    splits: split name -> column name -> array (equal length within a split).
    label_names: names of the classes, index = label id (empty for LM-only text).
    train_split: the split used for training.
    eval_split: the split used for evaluation.
    metadata: free-form facts (source, licence, generation parameters).
  """

  name: str
  splits: Mapping[str, Mapping[str, np.ndarray]]
  label_names: tuple[str, ...] = ()
  train_split: str = "train"
  eval_split: str = "test"
  metadata: Mapping[str, object] = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    """Number of classes (0 for LM-only datasets)."""
    return len(self.label_names)

  def split(self, name: str) -> Mapping[str, np.ndarray]:
    """Returns one split's columns.

    Raises:
      KeyError: naming the available splits.
    """
    if name not in self.splits:
      raise KeyError(f"split {name!r} not in dataset {self.name!r}: have {sorted(self.splits)}")
    return self.splits[name]

  @property
  def train(self) -> Mapping[str, np.ndarray]:
    """The training split."""
    return self.split(self.train_split)

  @property
  def eval(self) -> Mapping[str, np.ndarray]:
    """The evaluation split."""
    return self.split(self.eval_split)


def num_rows(columns: Mapping[str, np.ndarray]) -> int:
  """Number of rows of a split (length of its ``text`` column)."""
  return len(columns["text"])


def take(columns: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
  """Selects rows ``index`` of every column of a split."""
  return {k: np.asarray(v)[index] for k, v in columns.items()}


__all__ = ["TextDataset", "num_rows", "take"]
