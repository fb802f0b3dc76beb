"""TFDS builder for the SNIPS NLU benchmark (2017-06 custom intent engines, 7 intents).

Source: github.com/sonos/nlu-benchmark at commit ``b86ac7f1`` (CC0 1.0), folder
``2017-06-custom-intent-engines/<Intent>/``. Configs:

* ``full``: train = the 7 ``train_<Intent>_full.json`` files (13,784 queries).
* ``small``: train = the 7 ``train_<Intent>.json`` files (2,100 queries; mostly *not* subsets
  of the full files, so never mix the two).

Both have ``validation`` = the 7 ``validate_<Intent>.json`` files (700 queries, the usual SNIPS
test set). Each query is a list of text chunks, some tagged with a slot entity; ``text`` is
their concatenation, ``chunks``/``entities`` keep the slots (entity ``""`` = untagged chunk).
``PlayMusic/train_PlayMusic_full.json`` is Latin-1: files are decoded as UTF-8, falling back to
Latin-1.

Local copy: pass the folder holding the 7 intent folders as ``manual_dir``
(``<data dir>/snips_nlu_2017``); otherwise the 21 files are downloaded from GitHub.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping

import tensorflow_datasets as tfds

from trustml.data.builders import common

INTENTS = (
  "AddToPlaylist",
  "BookRestaurant",
  "GetWeather",
  "PlayMusic",
  "RateBook",
  "SearchCreativeWork",
  "SearchScreeningEvent",
)
COMMIT = "b86ac7f1577868c42158d0dec77db50956046696"
BASE_URL = (
  f"https://raw.githubusercontent.com/sonos/nlu-benchmark/{COMMIT}/2017-06-custom-intent-engines/"
)
LOCAL_SUBDIR = "snips_nlu_2017"
TRAIN_KINDS = ("full", "small")


def file_name(intent: str, kind: str) -> str:
  """Relative path of one source file.

  Args:
    intent: one of :data:`INTENTS`.
    kind: ``"full"``, ``"small"`` or ``"validate"``.

  Returns:
    ``<Intent>/<file>.json``.

  Raises:
    ValueError: for an unknown kind.
  """
  if kind == "full":
    return f"{intent}/train_{intent}_full.json"
  if kind == "small":
    return f"{intent}/train_{intent}.json"
  if kind == "validate":
    return f"{intent}/validate_{intent}.json"
  raise ValueError(f"kind={kind!r} is invalid: must be one of 'full', 'small', 'validate'")


def urls(train_kind: str) -> dict[str, str]:
  """Source files of one config.

  Args:
    train_kind: ``"full"`` or ``"small"``.

  Returns:
    Relative path -> public URL (train files of that kind plus the validate files).
  """
  rels = [file_name(i, k) for i in INTENTS for k in (train_kind, "validate")]
  return {rel: BASE_URL + rel for rel in rels}


def read_json(path: str | os.PathLike) -> dict:
  """Reads a SNIPS JSON file, decoding UTF-8 first, then Latin-1.

  Args:
    path: the file.

  Returns:
    The parsed JSON object.
  """
  raw = pathlib.Path(path).read_bytes()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    text = raw.decode("latin-1")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise common.damaged(path, f"line {e.lineno}", e) from None


def parse_files(files: Mapping[str, pathlib.Path], kind: str) -> list[dict]:
  """Parses the 7 files of one kind into examples (intent order, then file order).

  Args:
    files: relative path -> local path (see :func:`urls`).
    kind: ``"full"``, ``"small"`` or ``"validate"``.

  Returns:
    Dicts with ``text``, ``intent`` (name), ``chunks``, ``entities``.
  """
  examples = []
  for intent in INTENTS:
    path = files[file_name(intent, kind)]
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(intent), list):
      raise common.damaged(path, "top level", KeyError(f"no list of queries under {intent!r}"))
    for row, query in enumerate(data[intent]):
      try:
        chunks = [str(c["text"]) for c in query["data"]]
        entities = [c.get("entity", "") for c in query["data"]]
      except (KeyError, TypeError, AttributeError) as e:
        raise common.damaged(path, f"query {row}", e) from None
      examples.append(
        {"text": "".join(chunks), "intent": intent, "chunks": chunks, "entities": entities}
      )
  return examples


def read_local(folder: str | os.PathLike, train_kind: str = "full") -> dict[str, list[dict]]:
  """Direct reader (no TFDS) of a local copy.

  Args:
    folder: the folder holding the 7 intent folders.
    train_kind: ``"full"`` or ``"small"``.

  Returns:
    ``{"train": examples, "validation": examples}`` as :func:`parse_files` gives them.
  """
  folder = pathlib.Path(folder)
  files = {rel: folder / rel for rel in urls(train_kind)}
  return {"train": parse_files(files, train_kind), "validation": parse_files(files, "validate")}


@dataclasses.dataclass(kw_only=True)
class SnipsConfig(tfds.core.BuilderConfig):
  """Which training pool to use (``full`` or ``small``)."""

  train_kind: str = "full"


class Snips(tfds.core.GeneratorBasedBuilder):
  """SNIPS 2017 custom intent engines: 7-intent classification with slots."""

  code_path = common.CodePath()
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial trustml builder."}
  BUILDER_CONFIGS = [
    SnipsConfig(
      name=kind,
      description=f"train_<Intent>{'_full' if kind == 'full' else ''}.json",
      train_kind=kind,
    )
    for kind in TRAIN_KINDS
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Optional. Place the 7 intent folders of sonos/nlu-benchmark "
    "2017-06-custom-intent-engines/ in manual_dir; otherwise they are downloaded."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      disable_shuffling=True,
      description="SNIPS NLU benchmark 2017-06, 7 intents, with slot chunks.",
      features=tfds.features.FeaturesDict(
        {
          "text": tfds.features.Text(),
          "intent": tfds.features.ClassLabel(names=INTENTS),
          "chunks": tfds.features.Sequence(tfds.features.Text()),
          "entities": tfds.features.Sequence(tfds.features.Text()),
        }
      ),
      supervised_keys=("text", "intent"),
      homepage="https://github.com/sonos/nlu-benchmark",
      citation="Coucke et al. 2018, arXiv:1805.10190",
      license="CC0 1.0",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    kind = self.builder_config.train_kind
    files = common.source_files(dl_manager, urls(kind))
    return {
      "train": self._generate_examples(files, kind),
      "validation": self._generate_examples(files, "validate"),
    }

  def _generate_examples(self, files, kind):
    yield from enumerate(parse_files(files, kind))


__all__ = [
  "INTENTS",
  "LOCAL_SUBDIR",
  "Snips",
  "SnipsConfig",
  "TRAIN_KINDS",
  "file_name",
  "parse_files",
  "read_json",
  "read_local",
  "urls",
]
