"""Tests of the one data entry point: dispatch, config validation, Tiny Shakespeare speeches."""

import collections

import ml_collections
import numpy as np
import pytest

import trustml.data
from trustml.core.validation import ConfigError
from trustml.data import shakespeare, sources, synthetic


def test_public_names():
  assert sorted(trustml.data.__all__) == sorted(
    [
      "TextDataset",
      "batching",
      "builders",
      "dataset",
      "default_data_config",
      "load_dataset",
      "paths",
      "shakespeare",
      "sources",
      "synthetic",
      "tfds_sources",
      "tokenizers",
    ]
  )
  for name in trustml.data.__all__:
    assert getattr(trustml.data, name) is not None
  assert sources.__all__ == [
    "FIELD_DOCS",
    "NAMES",
    "default_data_config",
    "load_dataset",
    "validate_data",
  ]


@pytest.mark.parametrize("name", sources.NAMES)
def test_default_config_fields_documented_and_valid(name):
  cfg = sources.default_data_config(name)
  assert isinstance(cfg, ml_collections.ConfigDict)
  assert cfg.name == name
  for field in cfg:
    assert field in sources.FIELD_DOCS, field
  assert sources.validate_data(cfg)["name"] == name


def test_synthetic_through_entry_point_uses_seed_and_options():
  cfg = sources.default_data_config("synthetic")
  cfg.num_users, cfg.seed = 60, 3
  ds = sources.load_dataset(cfg)
  want = synthetic.generate(synthetic.SyntheticConfig(num_users=60, seed=3))
  assert list(ds.train["text"]) == list(want.train["text"])
  assert ds.num_classes == len(synthetic.INTENTS)
  assert len(np.unique(ds.train["user_id"])) == 60
  cfg.task = "lm"
  lm = sources.load_dataset(cfg)
  assert list(lm.train["text"]) == list(want.splits["lm"]["text"])
  assert list(lm.eval["text"]) == list(want.splits["lm_test"]["text"])
  # A plain mapping works too; missing fields take defaults.
  assert (
    sources.load_dataset({"name": "synthetic", "num_users": 60, "seed": 3}).train["text"][0]
    == (want.train["text"][0])
  )


@pytest.mark.parametrize(
  "overrides,match",
  [
    ({"name": "mnist"}, "data.name='mnist' is invalid: must be one of 'synthetic', 'snips'"),
    ({"name": "synthetic", "num_users": 0}, "data.num_users"),
    ({"name": "synthetic", "num_users": -5}, "data.num_users"),
    ({"name": "synthetic", "num_lm_sentences": 0}, "data.num_lm_sentences"),
    ({"name": "synthetic", "seed": -1}, "data.seed"),
    ({"name": "synthetic", "task": "slots"}, "data.task"),
    ({"name": "synthetic", "colour": 1}, "data.colour is not a known field"),
    ({"name": "snips", "snips_train": "medium"}, "data.snips_train"),
    ({"name": "snips", "use_tfds_builder": "yes"}, "data.use_tfds_builder"),
    ({"name": "tiny_shakespeare", "variant": "acts"}, "data.variant"),
    ({"name": "tiny_shakespeare", "min_speeches": 0}, "data.min_speeches"),
    ({"name": "imdb", "max_examples": -1}, "data.max_examples"),
    ({"name": "civil_comments", "civil_comments_config": "Toxic"}, "data.civil_comments_config"),
    ({"name": "civil_comments", "toxicity_threshold": 0.0}, "data.toxicity_threshold"),
  ],
)
def test_bad_configs_fail_before_work(overrides, match):
  with pytest.raises(ConfigError, match=match):
    sources.load_dataset(overrides)


@pytest.mark.parametrize("name", ["snips", "hatexplain", "bold", "tiny_shakespeare"])
def test_missing_local_copy_names_data_dir(name, tmp_path):
  cfg = sources.default_data_config(name)
  cfg.dir = str(tmp_path)  # exists but holds no dataset folder
  with pytest.raises(ConfigError, match="data.dir"):
    sources.load_dataset(cfg)


def test_missing_local_copy_without_any_data_dir(monkeypatch):
  from trustml.data import paths

  monkeypatch.delenv(paths.ENV_VAR, raising=False)
  monkeypatch.setattr(paths, "default_shared_dir", lambda: paths.pathlib.Path("/nonexistent/x"))
  with pytest.raises(ConfigError, match="data.dir is unset"):
    sources.load_dataset({"name": "snips"})


def test_tiny_shakespeare_speeches(shared_data_dir):
  cfg = sources.default_data_config("tiny_shakespeare")
  cfg.dir = str(shared_data_dir)
  ds = sources.load_dataset(cfg)
  assert ds.metadata["num_speeches"] == 7222 and ds.metadata["num_speakers"] == 309
  train, test = ds.splits["train"], ds.splits["test"]
  assert len(train["text"]) + len(test["text"]) == 7222
  speakers = collections.Counter(np.concatenate([train["speaker"], test["speaker"]]))
  assert len(speakers) == 309
  assert (speakers["GLOUCESTER"], speakers["DUKE VINCENTIO"], speakers["ROMEO"]) == (229, 193, 163)
  # Per speaker: the last floor(10%) speeches are test; ids are consistent across splits.
  n_test = collections.Counter(test["speaker"])
  for spk, n in speakers.items():
    assert n_test.get(spk, 0) == int(np.floor(0.1 * n))
  uid_of = dict(zip(train["speaker"], train["user_id"], strict=True))
  assert all(uid_of[s] == u for s, u in zip(test["speaker"], test["user_id"], strict=True))
  assert train["text"][0] == "Before we proceed any further, hear me speak."
  assert train["speaker"][0] == "First Citizen"
  # Filtering keeps README's count of speakers with >= 10 speeches, with contiguous ids.
  big = shakespeare.load(shared_data_dir / "tiny_shakespeare", min_speeches=10)
  ids = np.unique(np.concatenate([big.train["user_id"], big.eval["user_id"]]))
  assert len(ids) == 146 and ids.max() == 145


def test_parse_speeches_rejects_bad_block():
  assert shakespeare.parse_speeches("A:\nhi\n\nB:\nyo\n") == [("A", "hi"), ("B", "yo")]
  with pytest.raises(ValueError, match="NAME:"):
    shakespeare.parse_speeches("A:\nhi\n\nno name here\n")
