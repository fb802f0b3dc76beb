"""Every figure of trustml: run curves, bars, ROC curves, per-round curves, panels.

The one place that imports matplotlib (``Agg``, so nothing needs a display); the pillars
compute their numbers and hand them here. Every figure labels its axes; bars take 95% CI
error bars where the caller computed CIs; AUC bars and panels can draw a chance line and ROC
plots always draw the chance diagonal; per-round plots get integer ticks. Each function saves
one PNG (parent folders created) and returns the (closed) ``matplotlib.figure.Figure``, whose
axes a caller or a test can inspect.

:func:`plot_run` reads the run contract's event file (``step``, ``split``, then
``name: value``), so a central, DP, federated or attacked run gets the same pictures in
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

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

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


def _pyplot():
  """``matplotlib.pyplot`` on the ``Agg`` backend (imported lazily: plotting is optional)."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  return plt


def _finish(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Any:
  """Lays out, saves (creating parent folders) and closes ``fig``; returns it."""
  fig.tight_layout()
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=dpi)
  _pyplot().close(fig)
  return fig


def _integer_ticks(axis: Any) -> None:
  """Integer-only major ticks on ``axis`` (rounds, steps)."""
  from matplotlib import ticker  # noqa: PLC0415

  axis.set_major_locator(ticker.MaxNLocator(integer=True))


def _chance(ax: Any, value: float) -> None:
  ax.axhline(value, ls="--", color="gray", lw=1, label=f"chance ({value:g})")


def _save(path: pathlib.Path, curves: Mapping[str, Curve], ylabel: str, title: str) -> bool:
  curves = {label: c for label, c in curves.items() if c[0]}
  if not curves:
    return False
  fig, ax = _pyplot().subplots(figsize=(5, 3.2))
  for label, (steps, values) in curves.items():
    ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
  ax.set_xlabel("step")
  _integer_ticks(ax.xaxis)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if len(curves) > 1:
    ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  _finish(fig, path, dpi=110)
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


def bar_chart(
  path: str | os.PathLike,
  values: Mapping[str, float],
  *,
  ylabel: str,
  title: str,
  ci: Mapping[str, tuple[float, float]] | None = None,
  chance: float | None = None,
  xlabel: str = "",
) -> Any:
  """One bar per label, with 95% CI error bars where given and an optional chance line.

  Args:
    path: output ``.png`` (parent folders are created).
    values: label -> value.
    ylabel: y-axis label.
    xlabel: x-axis label (what the bars are: groups, communities, models).
    title: figure title.
    ci: label -> ``(low, high)`` of the value's confidence interval.
    chance: draw a dashed horizontal line here (e.g. 0.5 for an AUC).

  Returns:
    The saved figure.
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
    _chance(ax, chance)
    ax.legend(fontsize=7)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.tick_params(axis="x", labelrotation=45)
  return _finish(fig, path)


def scatter_plot(
  path: str | os.PathLike,
  x: Sequence[float],
  y: Sequence[float],
  *,
  xlabel: str,
  ylabel: str,
  title: str = "",
) -> Any:
  """A scatter plot of two per-example (or per-model) quantities.

  Returns:
    The saved figure.
  """
  fig, ax = _pyplot().subplots(figsize=(4.2, 3.4))
  ax.scatter(list(x), list(y), s=6, alpha=0.5)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  return _finish(fig, path)


def grouped_bar_chart(
  path: str | os.PathLike,
  groups: Sequence[str],
  values: Mapping[str, Sequence[float]],
  *,
  xlabel: str,
  ylabel: str,
  title: str,
  ylim: tuple[float, float] | None = None,
) -> Any:
  """Bars per group, one colour per series (e.g. per-group disparity of each model).

  Args:
    path: output ``.png``.
    groups: the x-axis groups, in order.
    values: series label -> one value per group (NaN: no bar).
    xlabel: x-axis label.
    ylabel: y-axis label.
    title: figure title.
    ylim: y-axis limits.

  Returns:
    The saved figure.
  """
  series = list(values)
  width = 0.8 / max(len(series), 1)
  fig, ax = _pyplot().subplots(figsize=(max(8.0, 0.8 * len(groups)), 5.0))
  x = np.arange(len(groups))
  for i, label in enumerate(series):
    heights = np.nan_to_num(np.asarray(values[label], np.float64))
    ax.bar(x + i * width, heights, width, label=label)
  ax.set_xticks(x + 0.4 - width / 2)
  ax.set_xticklabels(list(groups), rotation=60, ha="right", fontsize=7)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.legend(fontsize=7, ncol=4, loc="upper center")
  return _finish(fig, path, dpi=110)


def line_plot(
  path: str | os.PathLike,
  series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
  *,
  xlabel: str,
  ylabel: str,
  title: str = "",
  bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
  integer_x: bool = False,
) -> Any:
  """Curves ``y(x)`` (e.g. eval metric per round), with optional shaded bands.

  Args:
    path: output ``.png``.
    series: label -> ``(x, y)``.
    xlabel: x-axis label (name what a band is here, e.g. ``"(shaded: 95% CI over seeds)"``
      in the title).
    ylabel: y-axis label.
    title: figure title.
    bands: label -> ``(low, high)`` over the same ``x``, drawn shaded.
    integer_x: integer-only x ticks (rounds, steps).

  Returns:
    The saved figure.
  """
  fig, ax = _pyplot().subplots(figsize=(5.5, 3.5))
  for label, (x, y) in series.items():
    (line,) = ax.plot(list(x), list(y), marker="o", ms=2.5, label=label)
    if bands and label in bands:
      lo, hi = bands[label]
      ax.fill_between(list(x), list(lo), list(hi), alpha=0.2, color=line.get_color())
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if integer_x:
    _integer_ticks(ax.xaxis)
  if title:
    ax.set_title(title, fontsize=9)
  if len(series) > 1:
    ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  return _finish(fig, path, dpi=110)


_REFERENCE_STYLES = (("--", "black"), ("-.", "red"), (":", "purple"), ("--", "green"))


def roc_curves(
  path: str | os.PathLike,
  curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
  *,
  references: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
  resolution: float | None = None,
  floor: float = 1e-5,
  title: str = "ROC",
) -> Any:
  """ROC curves on log-log axes with the chance diagonal (TPR = FPR).

  Args:
    path: output ``.png``.
    curves: legend label -> ``(fpr, tpr)`` (values below ``floor`` are drawn at ``floor``).
    references: legend label -> ``(fpr, tpr)`` bounds or trade-off curves, drawn dashed.
    resolution: draw a vertical line at this FPR (e.g. 1/#negatives, below which an empirical
      ROC is not resolved).
    floor: the smallest rate on both log axes.
    title: figure title.

  Returns:
    The saved figure (its first line is the chance diagonal).
  """
  fig, ax = _pyplot().subplots(figsize=(5, 5))
  grid = np.logspace(np.log10(floor), 0, 400)
  ax.plot(grid, grid, ":", color="gray", label="chance (TPR = FPR)")
  for label, (fpr, tpr) in curves.items():
    ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=label)
  if resolution is not None:
    ax.axvline(resolution, color="gray", lw=0.8, ls="-.", label="FPR resolution 1/#negatives")
  for (label, (x, y)), (ls, color) in zip(
    (references or {}).items(), _REFERENCE_STYLES * 4, strict=False
  ):
    ax.plot(x, y, ls, color=color, label=label)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlim(floor, 1)
  ax.set_ylim(floor, 1.05)
  ax.set_xlabel("false positive rate (FPR)")
  ax.set_ylabel("true positive rate (TPR)")
  ax.set_title(title)
  ax.legend(loc="lower right", fontsize=7)
  return _finish(fig, path, dpi=120)


@dataclasses.dataclass(frozen=True)
class Panel:
  """One panel of :func:`panel_grid`.

  Attributes:
    title: panel title (and y-axis label unless ``ylabel`` is set).
    y: values over the grid's ``x``.
    ylabel: y-axis label.
    hlines: label -> value, dotted annotated reference lines (e.g. non-DP defenses).
    identity: draw ``y = x`` over the finite ``x`` (e.g. an ε lower bound against ε).
    chance: draw a dashed chance line at this value (0.5 for an AUC).
  """

  title: str
  y: Sequence[float]
  ylabel: str = ""
  hlines: Mapping[str, float] = dataclasses.field(default_factory=dict)
  identity: bool = False
  chance: float | None = None


def panel_grid(
  path: str | os.PathLike,
  x: Sequence[float],
  panels: Sequence[Panel],
  *,
  xlabel: str,
  series_label: str = "",
  xticks: Sequence[float] | None = None,
  xticklabels: Sequence[str] | None = None,
  log_x: bool = False,
  suptitle: str = "",
  ncols: int = 3,
) -> Any:
  """Several measures against one shared ``x`` (e.g. accuracy and leakage against ε).

  Args:
    path: output ``.png``.
    x: the shared x values (drawn sorted).
    panels: one :class:`Panel` per measure.
    xlabel: x-axis label of every panel.
    series_label: legend label of the main curve.
    xticks: explicit x ticks (e.g. the swept ε values and a stand-in for ∞).
    xticklabels: their labels.
    log_x: logarithmic x axis.
    suptitle: figure title.
    ncols: panels per row.

  Returns:
    The saved figure.
  """
  x = np.asarray(x, np.float64)
  order = np.argsort(x)
  nrows = -(-len(panels) // ncols)
  fig, axes = _pyplot().subplots(nrows, ncols, figsize=(4 * ncols, 3.5 * nrows), squeeze=False)
  finite = np.sort(x[np.isfinite(x)])
  for ax, panel in zip(axes.flat, panels, strict=False):
    y = np.asarray(panel.y, np.float64)
    ax.plot(x[order], y[order], "o-", label=series_label or None)
    for label, value in panel.hlines.items():
      ax.axhline(value, ls=":", lw=1, color="gray")
      ax.annotate(label, (x.min() if x.size else 1.0, value), fontsize=6)
    if panel.identity and finite.size:
      ax.plot(finite, finite, "--", color="black", label="y = x")
    if panel.chance is not None:
      _chance(ax, panel.chance)
    if panel.identity or panel.chance is not None:
      ax.legend(fontsize=7)
    if log_x:
      ax.set_xscale("log")
      ax.minorticks_off()
    if xticks is not None:
      ax.set_xticks(list(xticks))
      ax.set_xticklabels(list(xticklabels or [f"{t:.2g}" for t in xticks]), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(panel.ylabel or panel.title)
    ax.set_title(panel.title)
  for ax in list(axes.flat)[len(panels) :]:
    ax.set_visible(False)
  if suptitle:
    fig.suptitle(suptitle)
  return _finish(fig, path, dpi=120)


__all__ = [
  "EPSILON_KEYS",
  "Panel",
  "bar_chart",
  "curve",
  "grouped_bar_chart",
  "line_plot",
  "panel_grid",
  "plot_run",
  "read_events",
  "roc_curves",
  "scatter_plot",
]
