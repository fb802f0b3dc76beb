"""Data: sources (embedded corpus, local real sets, TFDS), tokenizers, batching.

Start from :func:`sources.load_dataset` with a ``data`` config section
(:func:`sources.default_data_config`); it returns a :class:`dataset.TextDataset`.
``tfds_sources`` and ``builders`` import TensorFlow Datasets (slow to import), so they load on
first attribute access.
"""

import importlib

from trustml.data import batching, dataset, paths, shakespeare, sources, synthetic, tokenizers
from trustml.data.dataset import TextDataset
from trustml.data.sources import default_data_config, load_dataset

_LAZY = ("builders", "tfds_sources")


def __getattr__(name: str):
  if name in _LAZY:
    return importlib.import_module(f"trustml.data.{name}")
  raise AttributeError(f"module 'trustml.data' has no attribute {name!r}")


__all__ = [
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
