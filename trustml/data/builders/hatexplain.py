"""TFDS builder for HateXplain (Mathew et al., AAAI 2021) with target-community annotations.

Labels: **0 = hatespeech, 1 = normal, 2 = offensive** (majority of the 3 annotators).

The splits come from two public repositories (the official ``Data/dataset.json`` is not used):

* ``test`` (1,924 posts) and ``validation`` (1,922): ``hatexplain_test.json`` /
  ``hatexplain_validation.json`` of swiyasree/HateSpeechDetection (JSON Lines, the Hugging Face
  ``hatexplain`` schema). **Full fidelity**: post id, 3 annotator labels and ids, and each
  annotator's target communities. ``targets`` = union over annotators, ``majority_targets`` =
  communities named by at least 2 of the 3 annotators (the HateXplain bias-metric convention).
* ``train`` (15,383 posts): ``training_data.csv`` of the same repo, a **reduced** flat export:
  no post id (``id`` = ``"train_<row>"``), no rationales, and only the *union* of annotators'
  targets, so ``annotator_targets`` and ``majority_targets`` are empty there and
  ``has_annotator_targets`` is False. Its ``severity`` column is an export artefact and ignored.

``text``: post tokens joined by spaces with ``" ."`` and ``" ,"`` squashed, the normalisation
the train export already has, applied to test/validation too so all splits match. ``"None"``
is kept in target lists as upstream writes it (it means "no target community").

Local copy: pass ``<data dir>/hatexplain`` (files ``test.jsonl``, ``validation.jsonl``,
``train_flat.csv``, ``post_id_divisions.json``) as ``manual_dir``; otherwise they are
downloaded from GitHub (pinned commits).
"""

import collections
import csv
import json
import os
import pathlib
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds

from trustml.data.builders import common

LABEL_NAMES = ("hatespeech", "normal", "offensive")
LOCAL_SUBDIR = "hatexplain"
_EXPORT = (
  "https://raw.githubusercontent.com/swiyasree/HateSpeechDetection/"
  "2a00e94445b4b3a248b8bb08e4f741d1c1aa1b54/data/"
)
_OFFICIAL = (
  "https://raw.githubusercontent.com/punyajoy/HateXplain/"
  "daa7955afbe796b00e79817f16621469a38820e0/Data/"
)
URLS = {
  "test.jsonl": _EXPORT + "data/raw/hatexplain_test.json",
  "validation.jsonl": _EXPORT + "data/raw/hatexplain_validation.json",
  "train_flat.csv": _EXPORT + "training_data.csv",
  "post_id_divisions.json": _OFFICIAL + "post_id_divisions.json",
}


def normalise_text(tokens: list[str]) -> str:
  """Joins post tokens as the train export does.

  Args:
    tokens: the post's tokens.

  Returns:
    Tokens joined by spaces, with ``" ."`` and ``" ,"`` squashed to ``"."`` and ``","``.
  """
  return " ".join(tokens).replace(" .", ".").replace(" ,", ",")


def majority(labels: list[int]) -> int | None:
  """Majority vote of the annotators.

  Args:
    labels: one label per annotator.

  Returns:
    The label named by at least 2 annotators, or ``None`` when all disagree.
  """
  label, count = collections.Counter(labels).most_common(1)[0]
  return label if count >= 2 else None


def parse_jsonl(path: str | os.PathLike, expected_ids: list[str] | None = None) -> list[dict]:
  """Parses a full-fidelity split (``test.jsonl`` / ``validation.jsonl``).

  Args:
    path: the JSON Lines file.
    expected_ids: if given, the official ids of the split; a mismatch raises.

  Returns:
    Examples (posts without a majority label are dropped; none in the official splits).

  Raises:
    ValueError: if the ids differ from ``expected_ids``.
  """
  examples, ids = [], []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        post = json.loads(line)
        ids.append(post["id"])
        ann = post["annotators"]
        label = majority(ann["label"])
        per_annotator = [sorted(set(t)) for t in ann["target"]]
        text = normalise_text(post["post_tokens"])
      except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise common.damaged(path, f"line {number}", e) from None
      if label is None:
        continue
      counts = collections.Counter(t for ts in per_annotator for t in ts)
      examples.append(
        {
          "id": post["id"],
          "text": text,
          "label": label,
          "annotator_labels": list(ann["label"]),
          "annotator_ids": list(ann["annotator_id"]),
          "annotator_targets": [",".join(ts) for ts in per_annotator],
          "targets": sorted(counts),
          "majority_targets": sorted(t for t, c in counts.items() if c >= 2),
          "has_annotator_targets": True,
        }
      )
  if expected_ids is not None and ids != list(expected_ids):
    raise ValueError(f"{path}: post ids differ from post_id_divisions.json")
  return examples


def parse_train_csv(path: str | os.PathLike) -> list[dict]:
  """Parses the reduced train export ``train_flat.csv``.

  Args:
    path: the CSV file (columns ``text,majority_label,severity,labels,annotator_ids,targets``).

  Returns:
    Examples with ``id = "train_<row>"``, union ``targets`` and empty per-annotator targets.
  """
  examples = []
  with open(path, encoding="utf-8", newline="") as f:
    for row, rec in enumerate(csv.DictReader(f)):
      try:
        targets = sorted({t.strip() for t in rec["targets"].split(",") if t.strip()})
        text = rec["text"]
        label = int(rec["majority_label"])
        labels = [int(x) for x in rec["labels"].split(",")]
        annotators = [int(x) for x in rec["annotator_ids"].split(",")]
      except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise common.damaged(path, f"row {row + 1} (line {row + 2})", e) from None
      examples.append(
        {
          "id": f"train_{row}",
          "text": text,
          "label": label,
          "annotator_labels": labels,
          "annotator_ids": annotators,
          "annotator_targets": [],
          "targets": targets,
          "majority_targets": [],
          "has_annotator_targets": False,
        }
      )
  return examples


def parse_files(files: Mapping[str, pathlib.Path]) -> dict[str, list[dict]]:
  """Parses all three splits.

  Args:
    files: relative name (keys of :data:`URLS`) -> local path.

  Returns:
    ``{"train", "validation", "test"}`` -> examples.

  Raises:
    ValueError: if the splits disagree with ``post_id_divisions.json``.
  """
  div_path = pathlib.Path(files["post_id_divisions.json"])
  try:
    divisions = json.loads(div_path.read_text("utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise common.damaged(div_path, f"line {getattr(e, 'lineno', '?')}", e) from None
  train = parse_train_csv(files["train_flat.csv"])
  if len(train) != len(divisions["train"]):
    raise ValueError(f"train_flat.csv has {len(train)} rows, expected {len(divisions['train'])}")
  return {
    "train": train,
    "validation": parse_jsonl(files["validation.jsonl"], divisions["val"]),
    "test": parse_jsonl(files["test.jsonl"], divisions["test"]),
  }


def read_local(folder: str | os.PathLike) -> dict[str, list[dict]]:
  """Direct reader (no TFDS) of a local copy.

  Args:
    folder: the folder holding the four files of :data:`URLS`.

  Returns:
    As :func:`parse_files`.
  """
  folder = pathlib.Path(folder)
  return parse_files({rel: folder / rel for rel in URLS})


class Hatexplain(tfds.core.GeneratorBasedBuilder):
  """HateXplain: hatespeech / normal / offensive with target communities."""

  code_path = common.CodePath()
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial trustml builder."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Optional. Place test.jsonl, validation.jsonl, train_flat.csv and post_id_divisions.json "
    "(see trustml/data/builders/hatexplain.py for their sources) in manual_dir."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      disable_shuffling=True,
      description="HateXplain posts with majority labels and target communities.",
      features=tfds.features.FeaturesDict(
        {
          "id": tfds.features.Text(),
          "text": tfds.features.Text(),
          "label": tfds.features.ClassLabel(names=LABEL_NAMES),
          "annotator_labels": tfds.features.Sequence(tfds.features.Scalar(dtype=np.int32)),
          "annotator_ids": tfds.features.Sequence(tfds.features.Scalar(dtype=np.int32)),
          "annotator_targets": tfds.features.Sequence(tfds.features.Text()),
          "targets": tfds.features.Sequence(tfds.features.Text()),
          "majority_targets": tfds.features.Sequence(tfds.features.Text()),
          "has_annotator_targets": tfds.features.Scalar(dtype=np.bool_),
        }
      ),
      supervised_keys=("text", "label"),
      homepage="https://github.com/punyajoy/HateXplain",
      citation="Mathew et al. 2021, arXiv:2012.10289",
      license="MIT",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    splits = parse_files(common.source_files(dl_manager, URLS))
    return {name: self._generate_examples(examples) for name, examples in splits.items()}

  def _generate_examples(self, examples):
    yield from enumerate(examples)


__all__ = [
  "Hatexplain",
  "LABEL_NAMES",
  "LOCAL_SUBDIR",
  "URLS",
  "majority",
  "normalise_text",
  "parse_files",
  "parse_jsonl",
  "parse_train_csv",
  "read_local",
]
