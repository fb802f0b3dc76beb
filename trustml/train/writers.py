"""The run contract's files: ``config.json``, ``metrics.jsonl``, ``summary.json``.

``metrics.jsonl`` holds one JSON object per logged event (``step``, ``split``, then
``name: value``); ``summary.json`` one flat object of final figures with slash-separated keys.
Every scalar also goes to TensorBoard event files in ``<workdir>/tb/`` (tagged
``<split>/<name>``, e.g. ``train/loss``, ``eval/accuracy``, ``train/privacy/epsilon``), so
``tensorboard --logdir=runs`` shows every run under ``runs/`` live (``pip install tensorboard``
for the viewer; trustml writes with tensorboardX). :func:`read_tensorboard` reads them back.
"""

import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging


def jsonable(value: Any) -> Any:
  """A JSON-serialisable copy of ``value`` (NumPy scalars unwrapped; inf/nan as strings)."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, (np.generic,)):
    value = value.item()
  if hasattr(value, "shape") and getattr(value, "shape", None) == ():
    value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no inf/nan; "inf" is unambiguous for readers.
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def _writes() -> bool:
  """Only process 0 writes the run contract in a multi-process run (every process computes it)."""
  from trustml.core import distributed  # noqa: PLC0415  (keeps this module free of JAX at import)

  return distributed.is_main_process()


def _write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes via a temporary file and a rename: a reader (another process) never sees half."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def write_config(workdir: str | os.PathLike, config: Any) -> None:
  """Writes the resolved config as ``config.json`` (process 0 only)."""
  if not _writes():
    return
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  _write_atomic(path / "config.json", json.dumps(jsonable(d), indent=2, sort_keys=True))


def write_summary(workdir: str | os.PathLike, summary: Mapping[str, Any]) -> None:
  """Writes the flat final-figures object as ``summary.json`` (process 0 only)."""
  if not _writes():
    return
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  _write_atomic(path / "summary.json", json.dumps(jsonable(summary), indent=2, sort_keys=True))


def read_summary(workdir: str | os.PathLike) -> dict[str, Any]:
  """Reads ``summary.json`` of a workdir."""
  return json.loads((pathlib.Path(workdir) / "summary.json").read_text())


class MetricWriter:
  """Appends events to ``metrics.jsonl`` (and TensorBoard if available).

  Example:
    >>> w = MetricWriter("/tmp/run")  # doctest: +SKIP
    >>> w.write(10, "train", loss=0.5)  # doctest: +SKIP
  """

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True):
    self.path = pathlib.Path(workdir)
    self._file = None
    self._tb = None
    if not _writes():  # Processes other than 0 write nothing; write() and close() are no-ops.
      return
    self.path.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path / "metrics.jsonl", "a")  # noqa: SIM115
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # type: ignore

        self._tb = SummaryWriter(str(self.path / "tb"), flush_secs=10)
      except ImportError:  # A dependency; missing only in a broken install.
        logging.warning("tensorboardX is not installed: no TensorBoard events in %s", self.path)
        self._tb = None

  def write(self, step: int, split: str, **scalars: Any) -> None:
    """Appends one event."""
    if self._file is None:
      return
    event = {"step": int(step), "split": split}
    event.update({k: jsonable(v) for k, v in scalars.items()})
    self._file.write(json.dumps(event) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        if isinstance(v, (int, float, np.generic)) or getattr(v, "shape", None) == ():
          self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
      self._tb.flush()  # Visible to a running `tensorboard --logdir` at once.

  def close(self) -> None:
    """Closes the files."""
    if self._file is None:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads all events of ``metrics.jsonl``."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_tensorboard(workdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """Reads the scalars of ``<workdir>/tb/`` event files back (no TensorFlow needed).

  Event files are TFRecord streams (``uint64`` length, ``uint32`` CRC, the record, ``uint32``
  CRC) of ``Event`` protos; this reads them with tensorboardX's own proto definitions.

  Args:
    workdir: the run directory.

  Returns:
    ``{tag: [(step, value), ...]}`` in file order, e.g. ``{"train/loss": [(2, 2.48), ...]}``.
  """
  import struct  # noqa: PLC0415

  from tensorboardX.proto import event_pb2  # noqa: PLC0415

  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted((pathlib.Path(workdir) / "tb").glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      record = data[pos + 12 : pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        if value.HasField("simple_value"):
          out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return out


__all__ = [
  "MetricWriter",
  "jsonable",
  "read_metrics",
  "read_summary",
  "read_tensorboard",
  "write_config",
  "write_summary",
]
