"""Curves of a run from its ``metrics.jsonl``: loss, accuracy (or perplexity), ε vs step.

One module for every pillar: each reads the run contract's event file (``step``, ``split``,
then ``name: value``), so a central, DP, federated or attacked run gets the same pictures in
``<workdir>/plots/``:

* ``loss.png``: training loss (when the run released it) and evaluation loss vs step;
* ``accuracy.png``: evaluation accuracy vs step (``perplexity.png`` for language models);
* ``epsilon.png``: ε spent so far vs step, for DP runs that log it (``privacy/epsilon``).

A curve with fewer than one point is skipped; a run without any event gets no plots.

Example:
  >>> from trustml.core import plots
  >>> plots.plot_run("runs/default")  # doctest: +SKIP
  ['runs/default/plots/loss.png', 'runs/default/plots/accuracy.png', ...]
"""

import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Curve = tuple[list[int], list[float]]

EPSILON_KEYS = ("privacy/epsilon", "epsilon")


def read_events(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The events of ``<workdir>/metrics.jsonl`` (empty when the file does not exist).

  Args:
    workdir: the run directory.

  Returns:
    One dict per line.
  """
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _as_float(value: Any) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    return None
  try:
    v = float(value)
  except ValueError:
    return None
  return v if math.isfinite(v) else None


def curve(events: Iterable[Mapping[str, Any]], split: str | None, keys: Sequence[str]) -> Curve:
  """``(steps, values)`` of the first of ``keys`` present in each event of ``split``.

  Args:
    events: events as :func:`read_events` returns them.
    split: the events' ``split`` (``"train"``, ``"eval"``); ``None`` accepts every split.
    keys: metric names, first match wins per event.

  Returns:
    Steps and finite values, in file order; a later event at the same step replaces an
    earlier one (a resumed run logs its last step again).
  """
  by_step: dict[int, float] = {}
  for e in events:
    if split is not None and e.get("split") != split:
      continue
    for k in keys:
      v = _as_float(e.get(k))
      if v is not None:
        by_step[int(e.get("step", 0))] = v
        break
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def _save(path: pathlib.Path, curves: Mapping[str, Curve], ylabel: str, title: str) -> bool:
  curves = {label: c for label, c in curves.items() if c[0]}
  if not curves:
    return False
  import matplotlib  # noqa: PLC0415  (plotting is optional at import time)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(5, 3.2))
  for label, (steps, values) in curves.items():
    ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if len(curves) > 1:
    ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_run(workdir: str | os.PathLike, title: str | None = None) -> list[str]:
  """Writes the loss, accuracy/perplexity and ε curves of a run into ``<workdir>/plots/``.

  Args:
    workdir: the run directory (its ``metrics.jsonl``).
    title: a prefix for the plot titles (default: the workdir's name).

  Returns:
    The paths written (none on processes other than 0 of a multi-process run).
  """
  from trustml.core import distributed  # noqa: PLC0415

  if not distributed.is_main_process():  # Process 0 writes the run contract.
    return []
  root = pathlib.Path(workdir)
  events = read_events(root)
  name = title or root.name
  out = []
  loss = {
    "train": curve(events, "train", ("loss",)),
    "eval": curve(events, "eval", ("loss",)),
  }
  if _save(root / "plots" / "loss.png", loss, "loss", f"{name}: loss"):
    out.append(str(root / "plots" / "loss.png"))
  for key in ("accuracy", "perplexity"):
    c = curve(events, "eval", (key,))
    if _save(root / "plots" / f"{key}.png", {"eval": c}, key, f"{name}: eval {key}"):
      out.append(str(root / "plots" / f"{key}.png"))
  eps = curve(events, None, EPSILON_KEYS)
  if _save(root / "plots" / "epsilon.png", {"ε": eps}, "ε spent", f"{name}: privacy budget"):
    out.append(str(root / "plots" / "epsilon.png"))
  return out


def _pyplot():
  import matplotlib  # noqa: PLC0415  (plotting is optional at import time)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  return plt


def bar_chart(
  path: str | os.PathLike,
  values: Mapping[str, float],
  *,
  ylabel: str,
  title: str,
  ci: Mapping[str, tuple[float, float]] | None = None,
  chance: float | None = None,
) -> str:
  """One bar per label, with 95% CI error bars where given and an optional chance line.

  Args:
    path: output ``.png`` (parent folders are created).
    values: label -> value.
    ylabel: y-axis label.
    title: figure title.
    ci: label -> ``(low, high)`` of the value's confidence interval.
    chance: draw a dashed horizontal line here (e.g. 0.5 for an AUC).

  Returns:
    The path written.
  """
  plt = _pyplot()
  labels = list(values)
  heights = [float(values[k]) for k in labels]
  fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(labels) + 1.5), 3.4))
  yerr = None
  if ci:
    yerr = [
      [max(h - ci[k][0], 0.0) if k in ci else 0.0 for k, h in zip(labels, heights, strict=True)],
      [max(ci[k][1] - h, 0.0) if k in ci else 0.0 for k, h in zip(labels, heights, strict=True)],
    ]
  ax.bar(labels, heights, yerr=yerr, capsize=3 if yerr else 0, color="tab:blue")
  if chance is not None:
    ax.axhline(chance, ls="--", color="gray", lw=1, label=f"chance ({chance:g})")
    ax.legend(fontsize=7)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.tick_params(axis="x", labelrotation=45)
  fig.tight_layout()
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return str(out)


def scatter_plot(
  path: str | os.PathLike,
  x: Sequence[float],
  y: Sequence[float],
  *,
  xlabel: str,
  ylabel: str,
  title: str = "",
) -> str:
  """A scatter plot of two per-example (or per-model) quantities.

  Returns:
    The path written.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(4.2, 3.4))
  ax.scatter(list(x), list(y), s=6, alpha=0.5)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return str(out)


__all__ = ["EPSILON_KEYS", "bar_chart", "curve", "plot_run", "read_events", "scatter_plot"]
