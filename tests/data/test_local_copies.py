"""A local copy that changed is rebuilt (checksum-keyed builds); a damaged file is one line."""

import json
import pathlib

import pytest

from trustml.core import validation
from trustml.data.builders import bold, common, hatexplain, snips


def _bold_copy(folder: pathlib.Path, prompt: str = "A carpenter is") -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for domain in bold.DOMAINS:
    data = {"group_a": {f"{domain}_entity": [f"{prompt} ({domain})", "Another prompt"]}}
    (folder / f"{domain}_prompt.json").write_text(json.dumps(data))
  return folder


def _prompts(builder) -> list[str]:
  return [row["prompt"] for row in common.read_split(builder, "test")]


def test_changed_local_copy_is_rebuilt_not_read_from_the_old_build(tmp_path):
  copy, tfds_dir = _bold_copy(tmp_path / "bold"), tmp_path / "tfds"
  first = common.prepare(bold.Bold, data_dir=tfds_dir, manual_dir=copy)
  assert _prompts(first) == [
    p for d in bold.DOMAINS for p in (f"A carpenter is ({d})", "Another prompt")
  ]
  digest = common.local_copy_digest(copy)
  assert (tfds_dir / f"local-{digest}" / "bold").is_dir()
  _bold_copy(copy, prompt="A nurse is")  # The copy changes in place.
  assert common.local_copy_digest(copy) != digest
  second = common.prepare(bold.Bold, data_dir=tfds_dir, manual_dir=copy)
  assert _prompts(second)[0] == f"A nurse is ({bold.DOMAINS[0]})"
  again = common.prepare(bold.Bold, data_dir=tfds_dir, manual_dir=copy)  # Unchanged: reused.
  assert _prompts(again) == _prompts(second)
  assert len(list(tfds_dir.glob("local-*"))) == 2


def test_digest_covers_names_and_contents(tmp_path):
  a = _bold_copy(tmp_path / "a")
  b = _bold_copy(tmp_path / "b")
  assert common.local_copy_digest(a) == common.local_copy_digest(b)
  (b / "extra.txt").write_text("x")
  assert common.local_copy_digest(a) != common.local_copy_digest(b)


def test_damaged_file_in_a_build_fails_with_one_line_naming_file_and_line(tmp_path):
  copy = _bold_copy(tmp_path / "bold")
  bad = copy / f"{bold.DOMAINS[2]}_prompt.json"
  bad.write_text('{"group_a": {"x": ["ok",\n  ]}')
  with pytest.raises(validation.ConfigError) as e:
    common.prepare(bold.Bold, data_dir=tmp_path / "tfds", manual_dir=copy)
  message = str(e.value)
  assert "\n" not in message and str(bad) in message and "line 2" in message


def test_damaged_rows_name_the_row(tmp_path):
  csv_path = tmp_path / "train_flat.csv"
  csv_path.write_text(
    "text,majority_label,severity,labels,annotator_ids,targets\n"
    'a post,1,0,"1,1,0","1,2,3",Women\n'
    'another,not_a_label,0,"1,1,0","1,2,3",\n'
  )
  with pytest.raises(validation.ConfigError, match=r"train_flat.csv' is invalid: row 2 \(line 3\)"):
    hatexplain.parse_train_csv(csv_path)
  jsonl = tmp_path / "test.jsonl"
  jsonl.write_text(
    '{"id": "1", "annotators": {"label": [0], "target": [[]]}, "post_tokens": ["a"]}\n{"id": 2}\n'
  )
  with pytest.raises(validation.ConfigError, match=r"test.jsonl' is invalid: line 2: KeyError"):
    hatexplain.parse_jsonl(jsonl)
  intent = snips.INTENTS[0]
  path = tmp_path / "q.json"
  path.write_text(json.dumps({intent: [{"data": [{"text": "play"}]}, {"no_data": 1}]}))
  with pytest.raises(validation.ConfigError, match=r"q.json' is invalid: query 1: KeyError"):
    snips.parse_files({snips.file_name(i, "validate"): path for i in snips.INTENTS}, "validate")
