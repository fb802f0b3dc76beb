"""Tests of the project's TFDS builders (SNIPS, HateXplain, BOLD) on the real local copies.

Row and label counts are the figures of each dataset's README in the shared data folder.
Full builds are slow (TFDS example serialisation), so one full build (SNIPS through
``load_dataset``) checks the real path end to end, and the others are built truncated and
compared row by row with the direct reader, which the count tests use.
"""

import collections
import functools
import http.server
import json
import threading

import numpy as np
import pytest

from trustml.data import sources
from trustml.data.builders import bold, common, hatexplain, snips

SNIPS_FULL = {
  "AddToPlaylist": 1942,
  "BookRestaurant": 1973,
  "GetWeather": 2000,
  "PlayMusic": 2000,
  "RateBook": 1956,
  "SearchCreativeWork": 1954,
  "SearchScreeningEvent": 1959,
}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _cfg(name, shared_data_dir, tfds_dir, **kw):
  cfg = sources.default_data_config(name)
  cfg.dir = str(shared_data_dir)
  cfg.tfds_data_dir = str(tfds_dir)
  cfg.update(kw)
  return cfg


def test_snips_full_through_builder_matches_readme_and_direct_reader(shared_data_dir, tfds_dir):
  ds = sources.load_dataset(_cfg("snips", shared_data_dir, tfds_dir))
  digest = common.local_copy_digest(shared_data_dir / snips.LOCAL_SUBDIR)
  assert (tfds_dir / f"local-{digest}" / "snips" / "full" / "1.0.0").is_dir()  # keyed by the copy
  assert ds.label_names == snips.INTENTS
  train, val = ds.splits["train"], ds.splits["validation"]
  assert len(train["text"]) == 13784 and len(val["text"]) == 700
  counts = np.bincount(train["label"], minlength=7)
  assert dict(zip(snips.INTENTS, counts.tolist(), strict=True)) == SNIPS_FULL
  assert (np.bincount(val["label"], minlength=7) == 100).all()
  direct = sources.load_dataset(_cfg("snips", shared_data_dir, tfds_dir, use_tfds_builder=False))
  for split in ("train", "validation"):
    for col in ("text", "label", "slots"):
      assert list(ds.splits[split][col]) == list(direct.splits[split][col]), (split, col)
  # Slots are spans of the text; PlayMusic full (Latin-1) decodes to non-ASCII text.
  for text, slots in zip(train["text"], train["slots"], strict=True):
    assert all(value in text for _, value in slots)
  play = train["text"][train["label"] == snips.INTENTS.index("PlayMusic")]
  assert any(not t.isascii() for t in play)
  assert not any("\ufffd" in t for t in play)


def test_snips_small(shared_data_dir, tfds_dir):
  ds = sources.load_dataset(
    _cfg("snips", shared_data_dir, tfds_dir, snips_train="small", use_tfds_builder=False)
  )
  assert len(ds.splits["train"]["text"]) == 2100
  assert (np.bincount(ds.splits["train"]["label"]) == 300).all()


def test_public_names():
  from trustml.data import builders

  assert sorted(builders.__all__) == [
    "Bold",
    "Hatexplain",
    "Snips",
    "bold",
    "common",
    "hatexplain",
    "snips",
  ]
  assert common.__all__ == [
    "CodePath",
    "FILE_FORMAT",
    "damaged",
    "local_copy_digest",
    "prepare",
    "read_split",
    "source_files",
  ]


def test_latin1_fallback(tmp_path):
  path = tmp_path / "f.json"
  path.write_bytes('{"A": ["caf\xe9"]}'.encode("latin-1"))
  assert snips.read_json(path) == {"A": ["café"]}


@pytest.mark.parametrize(
  "builder_cls,module,subdir",
  [
    (hatexplain.Hatexplain, hatexplain, "hatexplain"),
    (bold.Bold, bold, "bold_prompts"),
    (snips.Snips, snips, "snips_nlu_2017"),
  ],
)
def test_truncated_build_round_trips(builder_cls, module, subdir, shared_data_dir, tfds_dir):
  n = 150
  builder = common.prepare(
    builder_cls,
    data_dir=tfds_dir / "truncated",
    manual_dir=shared_data_dir / subdir,
    config="small" if module is snips else None,
    max_examples_per_split=n,
  )
  direct = module.read_local(
    shared_data_dir / subdir, **({"train_kind": "small"} if module is snips else {})
  )
  label_key = {"hatexplain": "label", "snips": "intent"}.get(module.__name__.split(".")[-1])
  for split, examples in direct.items():
    built = common.read_split(builder, split)
    assert len(built) == min(n, len(examples))
    for got, want in zip(built, examples, strict=False):
      for key, value in want.items():
        if key == label_key and isinstance(value, str):
          value = module.INTENTS.index(value)
        if isinstance(value, list):
          assert tuple(got[key]) == tuple(value), (split, key)
        else:
          assert got[key] == value, (split, key)


def test_hatexplain_counts_and_targets(shared_data_dir, tfds_dir):
  ds = sources.load_dataset(_cfg("hatexplain", shared_data_dir, tfds_dir, use_tfds_builder=False))
  assert ds.label_names == ("hatespeech", "normal", "offensive")
  sizes = {k: len(v["text"]) for k, v in ds.splits.items()}
  assert sizes == {"train": 15383, "validation": 1922, "test": 1924}
  # README: majority labels (hatespeech, normal, offensive).
  assert np.bincount(ds.splits["test"]["label"]).tolist() == [594, 782, 548]
  assert np.bincount(ds.splits["validation"]["label"]).tolist() == [593, 781, 548]
  assert np.bincount(ds.splits["train"]["label"]).tolist() == [4748, 6251, 4384]
  # README: posts where any annotator named the group, test split.
  raw = hatexplain.read_local(shared_data_dir / "hatexplain")
  named = collections.Counter(t for e in raw["test"] for t in e["targets"])
  assert (named["None"], named["African"], named["Women"], named["Islam"]) == (1012, 434, 357, 278)
  test = ds.splits["test"]
  assert sum("African" in g for g in test["groups"]) == 434
  assert all("None" not in g for g in test["groups"])
  # Majority targets are a subset of the union; train has only the union.
  assert all(set(m) <= set(g) for m, g in zip(test["groups_majority"], test["groups"], strict=True))
  assert "groups_majority" not in ds.splits["train"] and "groups" in ds.splits["train"]
  divisions = json.loads((shared_data_dir / "hatexplain" / "post_id_divisions.json").read_text())
  assert list(test["id"]) == divisions["test"]
  assert list(ds.splits["validation"]["id"]) == divisions["val"]


def test_bold_counts(shared_data_dir, tfds_dir):
  ds = sources.load_dataset(_cfg("bold", shared_data_dir, tfds_dir, use_tfds_builder=False))
  test = ds.splits["test"]
  assert len(test["text"]) == 23679 and len(ds.label_names) == 43
  per_domain = collections.Counter(test["domain"])
  assert per_domain == {
    "gender": 3204,
    "profession": 10195,
    "race": 7657,
    "religious_ideology": 639,
    "political_ideology": 1984,
  }
  assert (test["gender"] == 0).sum() == 2048 and (test["gender"] == 1).sum() == 1156
  assert [ds.label_names[i] for i in test["label"][:3]] == list(test["group"][:3])


class _FakeDownloadManager:
  """Stands in for tfds' DownloadManager: no manual dir; records what would be downloaded."""

  def __init__(self, manual):
    self._manual = manual
    self.requested = None

  @property
  def manual_dir(self):
    if self._manual is None:
      raise AssertionError("Manual directory not enabled.")
    return self._manual

  def download(self, urls):
    self.requested = dict(urls)
    return {k: f"/downloads/{k}" for k in urls}


@pytest.mark.parametrize(
  "urls,subdir",
  [
    (snips.urls("full"), "snips_nlu_2017"),
    (hatexplain.URLS, "hatexplain"),
    (bold.URLS, "bold_prompts"),
  ],
)
def test_source_files_manual_first_then_public_urls(urls, subdir, shared_data_dir, tmp_path):
  # Every file the builder needs is in the local copy, at the same relative path.
  local = common.source_files(_FakeDownloadManager(shared_data_dir / subdir), urls)
  assert all(p.is_file() for p in local.values())
  # Without a (complete) manual dir, the pinned public URLs are requested.
  dm = _FakeDownloadManager(tmp_path)  # empty folder: incomplete copy
  remote = common.source_files(dm, urls)
  assert dm.requested == dict(urls)
  assert all(u.startswith("https://raw.githubusercontent.com/") for u in urls.values())
  assert set(remote) == set(urls)


@pytest.fixture
def local_http(monkeypatch):
  """Serves a folder over HTTP on 127.0.0.1 (stands in for raw.githubusercontent.com)."""
  servers = []

  def serve(folder):
    handler = functools.partial(_QuietHandler, directory=str(folder))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    servers.append(srv)
    return f"http://127.0.0.1:{srv.server_address[1]}/"

  monkeypatch.setenv("NO_PROXY", "127.0.0.1")
  monkeypatch.setenv("no_proxy", "127.0.0.1")
  yield serve
  for srv in servers:
    srv.shutdown()
    srv.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@pytest.mark.parametrize(
  "module,subdir", [(snips, "snips_nlu_2017"), (hatexplain, "hatexplain"), (bold, "bold_prompts")]
)
def test_download_path_without_manual_dir(
  module, subdir, shared_data_dir, tmp_path, local_http, monkeypatch
):
  base = local_http(shared_data_dir / subdir)
  if module is snips:
    monkeypatch.setattr(snips, "BASE_URL", base)
  else:
    monkeypatch.setattr(module, "URLS", {rel: base + rel for rel in module.URLS})
  cls = {snips: snips.Snips, hatexplain: hatexplain.Hatexplain, bold: bold.Bold}[module]
  builder = common.prepare(
    cls,
    data_dir=tmp_path,
    manual_dir=None,
    config="small" if module is snips else None,
    max_examples_per_split=20,
  )
  assert any((tmp_path / "downloads").rglob("*.json"))  # fetched by the TFDS download manager
  direct = module.read_local(
    shared_data_dir / subdir, **({"train_kind": "small"} if module is snips else {})
  )
  for split, examples in direct.items():
    built = common.read_split(builder, split)
    text_key = "prompt" if module is bold else "text"
    assert [b[text_key] for b in built] == [e[text_key] for e in examples[:20]]
