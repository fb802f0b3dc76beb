"""Shared plumbing of the project's TFDS builders: locate source files, build, read back.

Each builder lists its source files as paths relative to a dataset folder (the layout of the
upstream repository, which is also the layout of the local copy under the data directory)
plus one public URL per file. :func:`source_files` returns local paths for them: from the
manual directory when it holds every file, otherwise downloaded by the TFDS download manager.

Building writes ``array_record`` files under ``<data_dir>/<name>/<config>/<version>/`` and
reading goes through ``builder.as_data_source`` (random-access ArrayRecord, no TensorFlow).
A build from a local copy goes to ``<data_dir>/local-<digest>/<name>/...`` instead, keyed by
:func:`local_copy_digest` (SHA-256 over the copy's file names and contents): a changed or
damaged copy is rebuilt, never read from an older build. A damaged file fails with one
:class:`~trustml.core.validation.ConfigError` line naming the file and the row
(:func:`damaged`).
"""

import hashlib
import inspect
import os
import pathlib
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from trustml.core import validation

FILE_FORMAT = "array_record"


class CodePath:
  """Descriptor for ``GeneratorBasedBuilder.code_path``: the builder module's file.

  TFDS 4.9.10's own ``code_path`` evaluates ``importlib_resources.abc`` for packages found on
  disk, and that backport package is not a dependency here (``ModuleNotFoundError``). The
  file path is what it would return anyway; TFDS reads ``checksums.tsv`` beside it.
  """

  def __get__(self, obj, cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))


def source_files(
  dl_manager: tfds.download.DownloadManager, urls: Mapping[str, str]
) -> dict[str, pathlib.Path]:
  """Returns a local path for each source file (manual copy first, else download).

  Args:
    dl_manager: the builder's download manager; its ``manual_dir`` is the local copy.
    urls: relative path inside the dataset folder -> public URL.

  Returns:
    Relative path -> local path.
  """
  try:
    manual = pathlib.Path(dl_manager.manual_dir)
  except (AssertionError, ValueError):
    manual = None
  if manual is not None and all((manual / rel).is_file() for rel in urls):
    return {rel: manual / rel for rel in urls}
  downloaded = dl_manager.download(dict(urls))
  return {rel: pathlib.Path(os.fspath(downloaded[rel])) for rel in urls}


def local_copy_digest(folder: str | os.PathLike) -> str:
  """A short SHA-256 of a local copy: every file's relative path and contents, in sorted order.

  Args:
    folder: the local copy (a dataset folder of the data directory).

  Returns:
    16 hex digits; any change of a file's bytes, name, or the set of files changes it.
  """
  root = pathlib.Path(folder)
  digest = hashlib.sha256()
  for path in sorted(p for p in root.rglob("*") if p.is_file()):
    digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
    digest.update(hashlib.sha256(path.read_bytes()).digest())
  return digest.hexdigest()[:16]


def damaged(path: str | os.PathLike, where: str, error: BaseException) -> validation.ConfigError:
  """The one-line error for a source file that cannot be parsed.

  Args:
    path: the file.
    where: the row, line or record (``"line 12"``, ``"row 40"``).
    error: what went wrong.

  Returns:
    A ConfigError to raise: ``data file '<path>' is invalid: <where>: <error>; ...``.
  """
  what = f"{type(error).__name__}: {error}".replace("\n", " ")
  return validation.ConfigError(
    f"data file {str(path)!r} is invalid: {where}: {what}; the local copy is damaged "
    "(restore the file from its source)"
  )


def prepare(
  builder_cls: type[tfds.core.GeneratorBasedBuilder],
  *,
  data_dir: str | os.PathLike,
  manual_dir: str | os.PathLike | None,
  config: str | None = None,
  max_examples_per_split: int | None = None,
) -> tfds.core.GeneratorBasedBuilder:
  """Builds (once; reused afterwards) a project dataset in ``data_dir``.

  Args:
    builder_cls: one of the project's builder classes.
    data_dir: the TFDS data directory (``data.tfds_data_dir``).
    manual_dir: folder holding a local copy of the source files, or ``None`` to download.
    config: builder config name (e.g. ``"full"`` for SNIPS).
    max_examples_per_split: keep only the first examples of each split (tests only: the
      truncated build is cached in ``data_dir`` like a full one, so use a scratch directory).

  Returns:
    The prepared builder.
  """
  if manual_dir:  # Keyed by the copy's contents: a changed copy never reuses an old build.
    digest = local_copy_digest(manual_dir)
    data_dir = pathlib.Path(data_dir) / f"local-{digest}"
    logging.info(
      "%s: local copy %s (sha256 %s), built in %s", builder_cls.name, manual_dir, digest, data_dir
    )
  tfds.disable_progress_bar()  # Build progress goes to the log, not to tqdm bars on stderr.
  builder = builder_cls(data_dir=os.fspath(data_dir), config=config, file_format=FILE_FORMAT)
  download_config = tfds.download.DownloadConfig(
    manual_dir=os.fspath(manual_dir) if manual_dir else None,
    max_examples_per_split=max_examples_per_split,
  )
  builder.download_and_prepare(download_config=download_config, file_format=FILE_FORMAT)
  return builder


def _to_python(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, (list, tuple)):
    return tuple(_to_python(v) for v in value)
  if isinstance(value, np.ndarray):
    if value.dtype.kind in ("O", "S"):
      return tuple(_to_python(v) for v in value.tolist())
    return value
  if isinstance(value, np.generic):
    return value.item()
  return value


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
  """Reads every example of a split through ``as_data_source`` (text decoded to ``str``).

  Args:
    builder: a prepared builder.
    split: split name.

  Returns:
    Examples in stored order, each a dict of feature -> Python value (text as ``str``,
    sequences of text as tuples of ``str``, numeric sequences as NumPy arrays).
  """
  source = builder.as_data_source(split=split)
  rows = source.__getitems__(list(range(len(source))))
  return [{k: _to_python(v) for k, v in row.items()} for row in rows]


__all__ = [
  "CodePath",
  "FILE_FORMAT",
  "damaged",
  "local_copy_digest",
  "prepare",
  "read_split",
  "source_files",
]
