"""Built-in TFDS sources under ``tfds.testing.mock_data`` (data_source path, no TensorFlow).

The mock replaces each dataset with random examples of its real feature spec, so these tests
check the mapping to TextDataset columns against the raw records the same mock returns.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from trustml.data import sources, tfds_sources

NUM = 6


@pytest.fixture(autouse=True)
def mock():
  with tfds.testing.mock_data(num_examples=NUM):
    yield


def _raw(tfds_name, split):
  return tfds_sources.read_examples(tfds.data_source(tfds_name, split=split))


@pytest.mark.parametrize("name,text_key", [("sst2", "sentence"), ("imdb", "text")])
def test_sentiment_sets(name, text_key):
  ds = sources.load_dataset(sources.default_data_config(name))
  assert set(ds.splits) == set(tfds_sources.SPLITS[name])
  assert ds.label_names == tfds_sources.LABEL_NAMES[name]
  for split, cols in ds.splits.items():
    raw = _raw(tfds_sources.TFDS_NAMES[name], split)
    assert list(cols["text"]) == [str(r[text_key]) for r in raw]
    np.testing.assert_array_equal(cols["label"], [int(r["label"]) for r in raw])
    assert cols["label"].dtype == np.int32 and (cols["user_id"] == -1).all()


def test_max_examples_truncates():
  cfg = sources.default_data_config("imdb")
  cfg.max_examples = 2
  ds = sources.load_dataset(cfg)
  assert all(len(c["text"]) == 2 for c in ds.splits.values())


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_civil_comments_identities(threshold):
  cfg = sources.default_data_config("civil_comments")
  cfg.civil_comments_config = "CivilCommentsIdentities"
  cfg.toxicity_threshold = threshold
  ds = sources.load_dataset(cfg)
  for split, cols in ds.splits.items():
    raw = _raw("civil_comments/CivilCommentsIdentities", split)
    tox = np.array([float(r["toxicity"]) for r in raw])
    np.testing.assert_array_equal(cols["label"], (tox >= threshold).astype(int))
    for r, groups, gender in zip(raw, cols["groups"], cols["gender"], strict=True):
      want = {c for c in tfds_sources.IDENTITY_COLUMNS if float(r[c]) >= 0.5}
      assert set(groups) == want
      male, female = "male" in want, "female" in want
      assert gender == (0 if male and not female else 1 if female and not male else -1)


def test_civil_comments_plain_has_no_groups():
  ds = sources.load_dataset(sources.default_data_config("civil_comments"))
  assert "groups" not in ds.train and (ds.train["gender"] == -1).all()
  assert set(np.unique(ds.train["label"])) <= {0, 1}


def test_tiny_shakespeare_char_ranges():
  cfg = sources.default_data_config("tiny_shakespeare")
  cfg.variant = "tfds_chars"
  whole = sources.load_dataset(cfg)
  assert set(whole.splits) == {"train", "validation", "test"}
  cfg.chunk_chars = 5
  chunked = sources.load_dataset(cfg)
  for split in whole.splits:
    joined = "".join(whole.splits[split]["text"])
    assert joined == "".join(chunked.splits[split]["text"])
    assert all(len(t) <= 5 for t in chunked.splits[split]["text"])
    assert joined == "".join(str(r["text"]) for r in _raw("tiny_shakespeare", split))
