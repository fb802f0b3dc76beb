"""The run contract's files: ``config.json``, ``metrics.jsonl``, ``summary.json``.

``metrics.jsonl`` holds one JSON object per logged event (``step``, ``split``, then
``name: value``); ``summary.json`` one flat object of final figures with slash-separated keys.
Scalars also go to TensorBoard when ``tensorboardX`` is importable.
"""

import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.generic,)):
    value = value.item()
  if hasattr(value, "shape") and getattr(value, "shape", None) == ():
    value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no inf/nan; "inf" is unambiguous for readers.
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def write_config(workdir: str | os.PathLike, config: Any) -> None:
  """Writes the resolved config as ``config.json``."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(_jsonable(d), indent=2, sort_keys=True))


def write_summary(workdir: str | os.PathLike, summary: Mapping[str, Any]) -> None:
  """Writes the flat final-figures object as ``summary.json``."""
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2, sort_keys=True))


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
    self.path.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path / "metrics.jsonl", "a")  # noqa: SIM115
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # type: ignore

        self._tb = SummaryWriter(str(self.path / "tb"))
      except ImportError:
        self._tb = None

  def write(self, step: int, split: str, **scalars: Any) -> None:
    """Appends one event."""
    event = {"step": int(step), "split": split}
    event.update({k: _jsonable(v) for k, v in scalars.items()})
    self._file.write(json.dumps(event) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        if isinstance(v, (int, float, np.generic)) or getattr(v, "shape", None) == ():
          self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def close(self) -> None:
    """Closes the files."""
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads all events of ``metrics.jsonl``."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["MetricWriter", "read_metrics", "read_summary", "write_config", "write_summary"]
