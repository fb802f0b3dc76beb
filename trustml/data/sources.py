"""One entry point for every data source: ``load_dataset(data_config) -> TextDataset``.

``data_config.name`` selects the source:

* ``synthetic``: the embedded corpus (:mod:`trustml.data.synthetic`), no files needed.
* ``snips``, ``hatexplain``, ``bold``: the project's TFDS builders
  (:mod:`trustml.data.builders`), built into ``data.tfds_data_dir`` from the local copy under
  ``data.dir`` (passed as ``manual_dir``), or downloaded when ``data.download`` is True and no
  local copy exists; ``data.use_tfds_builder=False`` parses the local copy directly instead.
* ``tiny_shakespeare``: speeches with speakers from the local copy
  (:mod:`trustml.data.shakespeare`, ``data.variant='speeches'``) or the built-in TFDS
  character ranges (``data.variant='tfds_chars'``).
* ``sst2``, ``imdb``, ``civil_comments``: built-in TFDS via ``tfds.data_source``
  (:mod:`trustml.data.tfds_sources`).

Every field is validated before any reading or generation; errors are
:class:`~trustml.core.validation.ConfigError` naming the field (``data.<field>``).
:func:`default_data_config` gives the fields of one source with their defaults, and
:data:`FIELD_DOCS` documents each field.
"""

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from trustml.core import validation
from trustml.data import dataset, paths, shakespeare, synthetic

# TFDS (~4 s to import) is imported lazily, only for the sources that need it.
CIVIL_COMMENTS_CONFIGS = ("CivilComments", "CivilCommentsIdentities")

NAMES = (
  "synthetic",
  "snips",
  "hatexplain",
  "bold",
  "tiny_shakespeare",
  "sst2",
  "imdb",
  "civil_comments",
)

FIELD_DOCS: Mapping[str, str] = {
  "name": f"data source, one of {', '.join(NAMES)}",
  "dir": "local data root holding the real copies ('' = $TRUSTML_DATA_DIR, then ../shared/data)",
  "seed": "generation seed (synthetic corpus)",
  "tfds_data_dir": "TFDS data directory for built/prepared datasets ('' = ~/tensorflow_datasets)",
  "download": "allow downloading from the public source when no local copy/prepared data exists",
  "use_tfds_builder": "build through the project's TFDS builder (False: parse the local copy)",
  "max_examples": "TFDS sources: keep at most this many examples per split (0 = all)",
  "num_users": "synthetic: number of users",
  "activity_exponent": "synthetic: Pareto tail exponent of utterances per user",
  "min_utterances_per_user": "synthetic: Pareto scale = minimum utterances per user (>= 2)",
  "max_utterances_per_user": "synthetic: cap on utterances per user",
  "intent_concentration": "synthetic: symmetric Dirichlet concentration of each user's intent mix",
  "neutral_mention_rate": "synthetic: probability a third-person mention is gender-neutral",
  "test_fraction": "synthetic/tiny_shakespeare: fraction of each user's last examples held out",
  "num_lm_sentences": "synthetic: size of the 'lm' split (lm_test gets a tenth)",
  "lm_bias": "synthetic: P(she | female-stereotyped profession) = P(he | male-stereotyped)",
  "task": "synthetic: 'intent' (train/eval = train/test) or 'lm' (train/eval = lm/lm_test)",
  "snips_train": "snips: training pool, 'full' (13,784) or 'small' (2,100)",
  "variant": "tiny_shakespeare: 'speeches' (local, with speakers) or 'tfds_chars' (TFDS ranges)",
  "min_speeches": "tiny_shakespeare speeches: keep speakers with at least this many speeches",
  "drop_empty": "tiny_shakespeare speeches: drop speeches with an empty body",
  "chunk_chars": "tiny_shakespeare tfds_chars: cut each split into chunks of this many chars (0 = no)",
  "civil_comments_config": "civil_comments: 'CivilComments' or 'CivilCommentsIdentities' (groups)",
  "toxicity_threshold": "civil_comments: label = toxicity >= this",
}

_COMMON = {
  "name": "synthetic",
  "dir": "",
  "seed": 0,
  "tfds_data_dir": "",
  "download": False,
}
_SYNTHETIC_DEFAULTS = synthetic.SyntheticConfig()
_SOURCE_FIELDS: Mapping[str, Mapping[str, Any]] = {
  "synthetic": {
    "num_users": _SYNTHETIC_DEFAULTS.num_users,
    "activity_exponent": _SYNTHETIC_DEFAULTS.activity_exponent,
    "min_utterances_per_user": _SYNTHETIC_DEFAULTS.min_utterances_per_user,
    "max_utterances_per_user": _SYNTHETIC_DEFAULTS.max_utterances_per_user,
    "intent_concentration": _SYNTHETIC_DEFAULTS.intent_concentration,
    "neutral_mention_rate": _SYNTHETIC_DEFAULTS.neutral_mention_rate,
    "test_fraction": _SYNTHETIC_DEFAULTS.test_fraction,
    "num_lm_sentences": _SYNTHETIC_DEFAULTS.num_lm_sentences,
    "lm_bias": _SYNTHETIC_DEFAULTS.lm_bias,
    "task": "intent",
  },
  "snips": {"snips_train": "full", "use_tfds_builder": True},
  "hatexplain": {"use_tfds_builder": True},
  "bold": {"use_tfds_builder": True},
  "tiny_shakespeare": {
    "variant": "speeches",
    "test_fraction": 0.1,
    "min_speeches": 1,
    "drop_empty": False,
    "chunk_chars": 0,
    "max_examples": 0,
  },
  "sst2": {"max_examples": 0},
  "imdb": {"max_examples": 0},
  "civil_comments": {
    "max_examples": 0,
    "civil_comments_config": "CivilComments",
    "toxicity_threshold": 0.5,
  },
}
_ALL_FIELDS = frozenset(_COMMON).union(*(set(f) for f in _SOURCE_FIELDS.values()))


def default_data_config(name: str = "synthetic") -> ml_collections.ConfigDict:
  """The ``data`` config section of one source with every field at its default.

  Args:
    name: one of :data:`NAMES`.

  Returns:
    A ConfigDict with the common fields (``name``, ``dir``, ``seed``, ``tfds_data_dir``,
    ``download``) and the source's own fields; :data:`FIELD_DOCS` documents each.

  Raises:
    ConfigError: for an unknown name.

  Example:
    >>> cfg = default_data_config("snips")
    >>> cfg.snips_train
    'full'
  """
  validation.one_of("data.name", name, NAMES)
  return ml_collections.ConfigDict({**_COMMON, "name": name, **_SOURCE_FIELDS[name]})


def _get(cfg: Mapping[str, Any], key: str) -> Any:
  if key in cfg:
    return cfg[key]
  if key in _COMMON:
    return _COMMON[key]
  return _SOURCE_FIELDS[cfg["name"]][key]


def validate_data(data_config: Mapping[str, Any]) -> dict[str, Any]:
  """Checks a ``data`` section and returns it as a plain dict with defaults filled in.

  Args:
    data_config: ConfigDict or mapping with at least ``name``.

  Returns:
    The common fields and the fields of the named source.

  Raises:
    ConfigError: unknown name (listing the allowed names), unknown field, or an invalid value.
  """
  cfg = dict(data_config.items())
  validation.one_of("data.name", cfg.get("name"), NAMES)
  validation.known_fields("data", cfg, _ALL_FIELDS)
  name = cfg["name"]
  out = {k: _get(cfg, k) for k in (*_COMMON, *_SOURCE_FIELDS[name])}
  validation.non_negative_int("data.seed", out["seed"])
  for key in ("dir", "tfds_data_dir"):
    if not isinstance(out[key], (str, os.PathLike)) and out[key] is not None:
      raise validation.ConfigError(f"data.{key}={out[key]!r} is invalid: must be a path string")
  for key in ("download", "use_tfds_builder", "drop_empty"):
    if key in out and not isinstance(out[key], bool):
      raise validation.ConfigError(f"data.{key}={out[key]!r} is invalid: must be a boolean")
  if name == "synthetic":
    _synthetic_config(out).validate("data")
    validation.one_of("data.task", out["task"], ("intent", "lm"))
  elif name == "snips":
    validation.one_of("data.snips_train", out["snips_train"], ("full", "small"))
  elif name == "tiny_shakespeare":
    validation.one_of("data.variant", out["variant"], ("speeches", "tfds_chars"))
    validation.in_range("data.test_fraction", out["test_fraction"], 0, 1, low_inclusive=True)
    validation.positive_int("data.min_speeches", out["min_speeches"])
    validation.non_negative_int("data.chunk_chars", out["chunk_chars"])
  elif name == "civil_comments":
    validation.one_of(
      "data.civil_comments_config",
      out["civil_comments_config"],
      CIVIL_COMMENTS_CONFIGS,
    )
    validation.in_range(
      "data.toxicity_threshold", out["toxicity_threshold"], 0, 1, high_inclusive=True
    )
  if "max_examples" in out:
    validation.non_negative_int("data.max_examples", out["max_examples"])
  return out


def _synthetic_config(cfg: Mapping[str, Any]) -> synthetic.SyntheticConfig:
  fields = {k: cfg[k] for k in _SOURCE_FIELDS["synthetic"] if k != "task"}
  return synthetic.SyntheticConfig(seed=cfg["seed"], **fields)


def _tfds_data_dir(cfg: Mapping[str, Any]) -> pathlib.Path:
  if cfg["tfds_data_dir"]:
    return pathlib.Path(cfg["tfds_data_dir"]).expanduser()
  return pathlib.Path("~/tensorflow_datasets").expanduser()


def _local_or_download(cfg: Mapping[str, Any], subdir: str) -> pathlib.Path | None:
  """The local copy folder, or ``None`` (download) when allowed; else a ConfigError."""
  try:
    return paths.require_dataset_dir(subdir, cfg["dir"] or None)
  except validation.ConfigError as err:
    if cfg["download"] and cfg["use_tfds_builder"]:
      return None
    raise validation.ConfigError(
      f"{err} (or set data.download=True to download {cfg['name']} from its public source)"
    ) from None


def _object_column(values) -> np.ndarray:
  arr = np.empty(len(values), object)
  for i, v in enumerate(values):
    arr[i] = v
  return arr


def _builder_splits(cfg, module, builder_cls, config=None) -> dict[str, list[dict]]:
  from trustml.data.builders import common  # noqa: PLC0415  (imports TFDS builders lazily)

  folder = _local_or_download(cfg, module.LOCAL_SUBDIR)
  if not cfg["use_tfds_builder"]:
    if module.__name__.endswith("snips"):
      return module.read_local(folder, cfg["snips_train"])
    return module.read_local(folder)
  builder = common.prepare(
    builder_cls, data_dir=_tfds_data_dir(cfg), manual_dir=folder, config=config
  )
  return {split: common.read_split(builder, split) for split in builder.info.splits}


def _label_id(value, names) -> int:
  return names.index(value) if isinstance(value, str) else int(value)


def _load_snips(cfg) -> dataset.TextDataset:
  from trustml.data.builders import snips  # noqa: PLC0415

  raw = _builder_splits(cfg, snips, snips.Snips, config=cfg["snips_train"])
  splits = {}
  for split, examples in raw.items():
    n = len(examples)
    splits[split] = {
      "text": _object_column([e["text"] for e in examples]),
      "label": np.array([_label_id(e["intent"], snips.INTENTS) for e in examples], np.int32),
      "user_id": np.full(n, -1, np.int32),
      "gender": np.full(n, -1, np.int32),
      "slots": _object_column(
        [
          tuple((ent, ch) for ch, ent in zip(e["chunks"], e["entities"], strict=True) if ent)
          for e in examples
        ]
      ),
    }
  return dataset.TextDataset(
    name="snips",
    splits=splits,
    label_names=snips.INTENTS,
    train_split="train",
    eval_split="validation",
    metadata={"source": snips.BASE_URL, "train": cfg["snips_train"]},
  )


def _load_hatexplain(cfg) -> dataset.TextDataset:
  from trustml.data.builders import hatexplain  # noqa: PLC0415

  raw = _builder_splits(cfg, hatexplain, hatexplain.Hatexplain)
  splits = {}
  for split, examples in raw.items():
    n = len(examples)
    cols = {
      "text": _object_column([e["text"] for e in examples]),
      "label": np.array([int(e["label"]) for e in examples], np.int32),
      "user_id": np.full(n, -1, np.int32),
      "gender": np.full(n, -1, np.int32),
      "groups": _object_column([tuple(t for t in e["targets"] if t != "None") for e in examples]),
      "id": _object_column([e["id"] for e in examples]),
      "annotator_labels": _object_column(
        [tuple(int(x) for x in e["annotator_labels"]) for e in examples]
      ),
    }
    if all(e["has_annotator_targets"] for e in examples):
      cols["groups_majority"] = _object_column(
        [tuple(t for t in e["majority_targets"] if t != "None") for e in examples]
      )
      cols["annotator_targets"] = _object_column([tuple(e["annotator_targets"]) for e in examples])
    splits[split] = cols
  return dataset.TextDataset(
    name="hatexplain",
    splits=splits,
    label_names=hatexplain.LABEL_NAMES,
    train_split="train",
    eval_split="validation",
    metadata={"source": "HateXplain (see trustml/data/builders/hatexplain.py)"},
  )


def _load_bold(cfg) -> dataset.TextDataset:
  from trustml.data.builders import bold  # noqa: PLC0415

  examples = _builder_splits(cfg, bold, bold.Bold)["test"]
  groups = tuple(dict.fromkeys(e["group"] for e in examples))
  gender_of = {"American_actors": 0, "American_actresses": 1}
  n = len(examples)
  cols = {
    "text": _object_column([e["prompt"] for e in examples]),
    "label": np.array([groups.index(e["group"]) for e in examples], np.int32),
    "user_id": np.full(n, -1, np.int32),
    "gender": np.array([gender_of.get(e["group"], -1) for e in examples], np.int32),
    "domain": _object_column([e["domain"] for e in examples]),
    "group": _object_column([e["group"] for e in examples]),
    "entity": _object_column([e["entity"] for e in examples]),
  }
  return dataset.TextDataset(
    name="bold",
    splits={"test": cols},
    label_names=groups,
    train_split="test",
    eval_split="test",
    metadata={"source": "https://github.com/amazon-research/bold", "note": "prompts only"},
  )


def load_dataset(data_config: Mapping[str, Any]) -> dataset.TextDataset:
  """Loads the dataset a ``data`` config section names.

  Args:
    data_config: ``config.data`` (ConfigDict or mapping); see :func:`default_data_config`.

  Returns:
    The TextDataset (columns per source: see each source module's docstring).

  Raises:
    ConfigError: for any invalid field, or a missing local copy (naming ``data.dir``), before
      any reading.

  Example:
    >>> ds = load_dataset({"name": "synthetic", "num_users": 50})
    >>> ds.num_classes
    12
  """
  cfg = validate_data(data_config)
  name = cfg["name"]
  if name == "synthetic":
    ds = synthetic.generate(_synthetic_config(cfg))
    if cfg["task"] == "lm":
      ds = dataclasses.replace(ds, train_split="lm", eval_split="lm_test")
    return ds
  if name == "snips":
    return _load_snips(cfg)
  if name == "hatexplain":
    return _load_hatexplain(cfg)
  if name == "bold":
    return _load_bold(cfg)
  if name == "tiny_shakespeare" and cfg["variant"] == "speeches":
    folder = paths.require_dataset_dir(shakespeare.LOCAL_SUBDIR, cfg["dir"] or None)
    return shakespeare.load(
      folder,
      test_fraction=cfg["test_fraction"],
      min_speeches=cfg["min_speeches"],
      drop_empty=cfg["drop_empty"],
    )
  from trustml.data import tfds_sources  # noqa: PLC0415

  return tfds_sources.load(
    name,
    data_dir=_tfds_data_dir(cfg),
    download=cfg["download"],
    max_examples=cfg["max_examples"],
    civil_comments_config=cfg.get("civil_comments_config", "CivilComments"),
    toxicity_threshold=cfg.get("toxicity_threshold", 0.5),
    chunk_chars=cfg.get("chunk_chars", 0),
  )


__all__ = [
  "FIELD_DOCS",
  "NAMES",
  "default_data_config",
  "load_dataset",
  "validate_data",
]
