"""Built-in TFDS text datasets through one loader, via ``tfds.data_source`` (no TensorFlow).

``tfds.load`` needs TensorFlow; ``tfds.data_source`` reads the prepared ``array_record`` files
directly, so it works without it (also under ``tfds.testing.mock_data``). Datasets must be
prepared in ``data_dir`` (``data.tfds_data_dir``; default ``~/tensorflow_datasets``) or
downloadable (``download=True``, needs network). ``civil_comments`` and ``glue`` register only
after ``import tensorflow_datasets.text``, done here.

Mapping to :class:`trustml.data.dataset.TextDataset` columns (``user_id`` and ``gender`` are -1
unless stated):

* ``sst2`` (``glue/sst2``): ``sentence`` -> ``text``, ``label`` (0 negative, 1 positive).
  Splits ``train``, ``validation`` (GLUE's ``test`` has no labels and is not loaded).
* ``imdb`` (``imdb_reviews``): ``text``, ``label`` (0 neg, 1 pos); splits ``train``, ``test``.
* ``civil_comments`` (config ``CivilComments`` or ``CivilCommentsIdentities``): ``text``,
  ``label`` = ``toxicity >= toxicity_threshold`` (0.5), ``toxicity`` (float). With the
  identities config: ``groups`` = the identity columns with value >= 0.5 (tuple of names) and
  ``gender`` = 0 if only ``male`` >= 0.5, 1 if only ``female`` >= 0.5, else -1.
  Splits ``train``, ``validation``, ``test``.
* ``tiny_shakespeare``: the same ``input.txt`` as :mod:`trustml.data.shakespeare` but cut into
  90/5/5 character ranges, one example per split (``train``, ``validation``, ``test``);
  ``chunk_chars > 0`` cuts each split into consecutive chunks of that many characters.

``max_examples > 0`` keeps the first that many examples of each split (civil_comments has
~1.8M training comments).
"""

import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
import tensorflow_datasets.text  # noqa: F401  (registers glue, civil_comments)

from trustml.core import validation
from trustml.data import dataset

TFDS_NAMES = {
  "sst2": "glue/sst2",
  "imdb": "imdb_reviews",
  "civil_comments": "civil_comments",
  "tiny_shakespeare": "tiny_shakespeare",
}
SPLITS = {
  "sst2": ("train", "validation"),
  "imdb": ("train", "test"),
  "civil_comments": ("train", "validation", "test"),
  "tiny_shakespeare": ("train", "validation", "test"),
}
EVAL_SPLITS = {
  "sst2": "validation",
  "imdb": "test",
  "civil_comments": "test",
  "tiny_shakespeare": "validation",
}
LABEL_NAMES = {
  "sst2": ("negative", "positive"),
  "imdb": ("neg", "pos"),
  "civil_comments": ("non_toxic", "toxic"),
  "tiny_shakespeare": (),
}
CIVIL_COMMENTS_CONFIGS = ("CivilComments", "CivilCommentsIdentities")
IDENTITY_COLUMNS = (
  "male",
  "female",
  "transgender",
  "other_gender",
  "heterosexual",
  "homosexual_gay_or_lesbian",
  "bisexual",
  "other_sexual_orientation",
  "christian",
  "jewish",
  "muslim",
  "hindu",
  "buddhist",
  "atheist",
  "other_religion",
  "black",
  "white",
  "asian",
  "latino",
  "other_race_or_ethnicity",
  "physical_disability",
  "intellectual_or_learning_disability",
  "psychiatric_or_mental_illness",
  "other_disability",
)
IDENTITY_THRESHOLD = 0.5


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_examples(source: Sequence, max_examples: int = 0) -> list[dict]:
  """Reads records of a data source in index order.

  Args:
    source: a ``tfds.data_source`` split (random access).
    max_examples: keep the first this many (0 = all).

  Returns:
    The records (dicts of feature -> value).
  """
  n = len(source) if max_examples <= 0 else min(len(source), max_examples)
  if n == 0:
    return []
  try:
    return list(source.__getitems__(list(range(n))))  # one batched read
  except TypeError:  # the mock data source of tfds.testing.mock_data lacks batched reads
    return [source[i] for i in range(n)]


def _columns(name: str, rows: list[dict], *, toxicity_threshold: float, chunk_chars: int) -> dict:
  n = len(rows)
  minus_one = np.full(n, -1, np.int32)
  if name == "tiny_shakespeare":
    texts = [_text(r["text"]) for r in rows]
    if chunk_chars > 0:
      texts = [t[i : i + chunk_chars] for t in texts for i in range(0, len(t), chunk_chars)]
    m = len(texts)
    return {
      "text": np.array(texts + [""], object)[:m],
      "label": np.full(m, -1, np.int32),
      "user_id": np.full(m, -1, np.int32),
      "gender": np.full(m, -1, np.int32),
    }
  key = "sentence" if name == "sst2" else "text"
  text = np.empty(n, object)
  text[:] = [_text(r[key]) for r in rows]
  cols = {"text": text, "user_id": minus_one, "gender": minus_one.copy()}
  if name in ("sst2", "imdb"):
    cols["label"] = np.array([int(r["label"]) for r in rows], np.int32).reshape(n)
    return cols
  toxicity = np.array([float(r["toxicity"]) for r in rows], np.float32).reshape(n)
  cols["toxicity"] = toxicity
  cols["label"] = (toxicity >= toxicity_threshold).astype(np.int32)
  if rows and "male" in rows[0]:
    groups = np.empty(n, object)
    groups[:] = [
      tuple(c for c in IDENTITY_COLUMNS if float(r[c]) >= IDENTITY_THRESHOLD) for r in rows
    ]
    cols["groups"] = groups
    male = np.array([float(r["male"]) >= IDENTITY_THRESHOLD for r in rows]).reshape(n)
    female = np.array([float(r["female"]) >= IDENTITY_THRESHOLD for r in rows]).reshape(n)
    cols["gender"] = np.where(male & ~female, 0, np.where(female & ~male, 1, -1)).astype(np.int32)
  return cols


def load(
  name: str,
  *,
  data_dir: str | os.PathLike | None = None,
  download: bool = False,
  max_examples: int = 0,
  civil_comments_config: str = "CivilComments",
  toxicity_threshold: float = 0.5,
  chunk_chars: int = 0,
) -> dataset.TextDataset:
  """Loads a built-in TFDS text dataset as a TextDataset.

  Args:
    name: one of ``sst2``, ``imdb``, ``civil_comments``, ``tiny_shakespeare``.
    data_dir: TFDS data directory (``None``: TFDS default, ``~/tensorflow_datasets``).
    download: whether TFDS may download and prepare the dataset when it is missing.
    max_examples: keep at most this many examples per split (0 = all).
    civil_comments_config: ``CivilComments`` or ``CivilCommentsIdentities``.
    toxicity_threshold: civil_comments label = toxicity >= this.
    chunk_chars: tiny_shakespeare only: cut each split into chunks of this many chars (0 = no).

  Returns:
    The TextDataset (columns as in the module docstring).

  Raises:
    ConfigError: for an unknown name or an invalid option, before any reading.
  """
  validation.one_of("data.name", name, tuple(TFDS_NAMES))
  validation.non_negative_int("data.max_examples", max_examples)
  validation.non_negative_int("data.chunk_chars", chunk_chars)
  validation.in_range("data.toxicity_threshold", toxicity_threshold, 0, 1, high_inclusive=True)
  tfds_name = TFDS_NAMES[name]
  if name == "civil_comments":
    validation.one_of("data.civil_comments_config", civil_comments_config, CIVIL_COMMENTS_CONFIGS)
    tfds_name = f"civil_comments/{civil_comments_config}"
  splits = {}
  for split in SPLITS[name]:
    source = tfds.data_source(
      tfds_name, split=split, data_dir=os.fspath(data_dir) if data_dir else None, download=download
    )
    rows = read_examples(source, max_examples)
    splits[split] = _columns(
      name, rows, toxicity_threshold=toxicity_threshold, chunk_chars=chunk_chars
    )
  return dataset.TextDataset(
    name=name,
    splits=splits,
    label_names=LABEL_NAMES[name],
    train_split="train",
    eval_split=EVAL_SPLITS[name],
    metadata={"source": f"tfds:{tfds_name}", "max_examples": max_examples},
  )


__all__ = [
  "CIVIL_COMMENTS_CONFIGS",
  "IDENTITY_COLUMNS",
  "LABEL_NAMES",
  "SPLITS",
  "TFDS_NAMES",
  "load",
  "read_examples",
]
