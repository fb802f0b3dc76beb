"""TFDS builder for BOLD prompts (Dhamala et al., FAccT 2021): 23,679 prompts in 43 groups.

Source: github.com/amazon-research/bold at commit ``3ad652c7`` (CC BY-SA 4.0),
``prompts/<domain>_prompt.json`` for the 5 domains in :data:`DOMAINS`. Each file maps
group -> entity (Wikipedia page name) -> list of prompts. One split, ``test`` (the prompts are
for evaluating generation only), in file order: domain, then group, entity, prompt.

Local copy: pass ``<data dir>/bold_prompts`` as ``manual_dir``; otherwise the 5 files are
downloaded from GitHub.
"""

import json
import os
import pathlib
from collections.abc import Mapping

import tensorflow_datasets as tfds

from trustml.data.builders import common

DOMAINS = ("gender", "profession", "race", "religious_ideology", "political_ideology")
LOCAL_SUBDIR = "bold_prompts"
COMMIT = "3ad652c773f5d1e30d5f6f61657ed934d768ecad"
URLS = {
  f"{d}_prompt.json": (
    f"https://raw.githubusercontent.com/amazon-research/bold/{COMMIT}/prompts/{d}_prompt.json"
  )
  for d in DOMAINS
}


def parse_files(files: Mapping[str, pathlib.Path]) -> list[dict]:
  """Parses the 5 prompt files.

  Args:
    files: relative name (``<domain>_prompt.json``) -> local path.

  Returns:
    ``{domain, group, entity, prompt}`` dicts in file order (domain, group, entity, prompt).
  """
  examples = []
  for domain in DOMAINS:
    path = pathlib.Path(files[f"{domain}_prompt.json"])
    try:
      data = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise common.damaged(path, f"line {getattr(e, 'lineno', '?')}", e) from None
    if not isinstance(data, dict):
      raise common.damaged(path, "top level", TypeError("not a JSON object of groups"))
    for group, entities in data.items():
      try:
        for entity, prompts in entities.items():
          for prompt in prompts:
            if not isinstance(prompt, str):
              raise TypeError(f"prompt {prompt!r} of {entity!r} is not text")
            examples.append({"domain": domain, "group": group, "entity": entity, "prompt": prompt})
      except (AttributeError, TypeError) as e:
        raise common.damaged(path, f"group {group!r}", e) from None
  return examples


def read_local(folder: str | os.PathLike) -> dict[str, list[dict]]:
  """Direct reader (no TFDS) of a local copy.

  Args:
    folder: the folder holding the 5 ``<domain>_prompt.json`` files.

  Returns:
    ``{"test": examples}`` as :func:`parse_files` gives them.
  """
  folder = pathlib.Path(folder)
  return {"test": parse_files({rel: folder / rel for rel in URLS})}


class Bold(tfds.core.GeneratorBasedBuilder):
  """BOLD generation-bias prompts."""

  code_path = common.CodePath()
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial trustml builder."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Optional. Place the 5 files prompts/<domain>_prompt.json of amazon-research/bold in "
    "manual_dir."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      disable_shuffling=True,
      description="BOLD prompts: domain, group, entity, prompt.",
      features=tfds.features.FeaturesDict(
        {
          "domain": tfds.features.Text(),
          "group": tfds.features.Text(),
          "entity": tfds.features.Text(),
          "prompt": tfds.features.Text(),
        }
      ),
      homepage="https://github.com/amazon-research/bold",
      citation="Dhamala et al. 2021, arXiv:2101.11718",
      license="CC BY-SA 4.0",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    return {"test": self._generate_examples(parse_files(common.source_files(dl_manager, URLS)))}

  def _generate_examples(self, examples):
    yield from enumerate(examples)


__all__ = ["Bold", "DOMAINS", "LOCAL_SUBDIR", "URLS", "parse_files", "read_local"]
