"""Tables and curve plots over the runs of a federated sweep (mean +- std across seeds).

Example:
  >>> from trustml.federated import report
  >>> md = report.summarize("/tmp/sel_sweep", group_by=("fed/sampler", "fed/setting"))  # doctest: +SKIP
"""

import json
import pathlib
from collections.abc import Sequence

import numpy as np

from trustml.core import plots


def load_runs(sweep_dir: str | pathlib.Path) -> list[dict]:
  """Summaries of every finished run under ``sweep_dir`` (``<run>/summary.json``), with ``run``
  and ``seed`` (from ``<run>/config.json``, ``None`` when absent)."""
  runs = []
  for path in sorted(pathlib.Path(sweep_dir).glob("*/summary.json")):
    s = json.loads(path.read_text())
    s["run"] = path.parent.name
    cfg = path.parent / "config.json"
    s["seed"] = json.loads(cfg.read_text()).get("seed") if cfg.exists() else None
    runs.append(s)
  return runs


def _metric_keys(runs: list[dict]) -> list[str]:
  keys = ["eval/accuracy", "eval/perplexity", "eval/loss"]
  keys += sorted({k for r in runs for k in r if k.startswith("continual/")})
  return [k for k in keys if any(k in r for r in runs)]


def group(runs: list[dict], group_by: Sequence[str]) -> dict[tuple, list[dict]]:
  """Runs grouped by the values of ``group_by`` summary keys."""
  out: dict[tuple, list[dict]] = {}
  for r in runs:
    out.setdefault(tuple(r.get(k, "-") for k in group_by), []).append(r)
  return out


def table(runs: list[dict], group_by: Sequence[str]) -> str:
  """Markdown table: one row per group, mean +- std (n seeds) of each final metric."""
  keys = _metric_keys(runs)
  lines = [
    "| " + " | ".join(list(group_by) + ["seeds"] + keys) + " |",
    "|" + "---|" * (len(group_by) + 1 + len(keys)),
  ]
  for g, rs in sorted(group(runs, group_by).items(), key=lambda kv: tuple(map(str, kv[0]))):
    cells = [str(x) for x in g] + [str(len(rs))]
    for k in keys:
      v = np.array(
        [float(r[k]) for r in rs if k in r and r[k] not in ("nan", "inf")], dtype=np.float64
      )
      cells.append(
        f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}" if len(v) else "-"
      )
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
  """Mean and Student-t confidence interval of ``values`` (``scipy.stats.t``).

  Args:
    values: one figure per seed (at least 2).
    confidence: the interval's coverage.

  Returns:
    ``(mean, low, high)``.

  Raises:
    ValueError: with fewer than 2 values.

  Example:
    >>> [round(x, 3) for x in t_interval([1.0, 2.0, 3.0])]
    [2.0, -0.484, 4.484]
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  v = np.asarray(values, dtype=np.float64)
  if len(v) < 2:
    raise ValueError(f"t_interval needs >= 2 values, got {len(v)}")
  low, high = stats.t.interval(confidence, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
  return float(v.mean()), float(low), float(high)


def interval_table(
  runs: list[dict], group_by: Sequence[str], metric: str = "eval/perplexity", digits: int = 3
) -> str:
  """Markdown table: one row per group, ``n`` and the mean [95% t-interval] of ``metric``."""
  lines = [
    "| " + " | ".join([*group_by, "n", f"{metric} mean [95% CI]"]) + " |",
    "|" + "---|" * (len(group_by) + 2),
  ]
  for g, rs in sorted(group(runs, group_by).items(), key=lambda kv: tuple(map(str, kv[0]))):
    values = [float(r[metric]) for r in rs]
    if len(values) < 2:  # No interval from one seed.
      cell = f"{values[0]:.{digits}f}"
    else:
      mean, low, high = t_interval(values)
      cell = f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    cells = [*map(str, g), str(len(rs)), cell]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def paired_differences(
  runs: list[dict],
  group_by: Sequence[str],
  compare: str,
  baseline: str,
  metric: str = "eval/perplexity",
) -> dict[tuple, tuple[float, float, float, int]]:
  """Per group, ``metric(compare=other) - metric(compare=baseline)`` paired by ``seed``.

  Args:
    runs: from :func:`load_runs`.
    group_by: keys held fixed within a pair (e.g. setting and weighting).
    compare: the key that differs within a pair (e.g. ``fed/sampler``).
    baseline: its value subtracted.
    metric: the summary figure.

  Returns:
    ``{group + (other value,): (mean, low, high, n pairs)}`` with a 95% t-interval.
  """
  out = {}
  for g, rs in group(runs, group_by).items():
    base = {r["seed"]: float(r[metric]) for r in rs if r.get(compare) == baseline}
    for other in sorted({str(r.get(compare)) for r in rs} - {baseline}):
      diffs = [
        float(r[metric]) - base[r["seed"]]
        for r in rs
        if str(r.get(compare)) == other and r["seed"] in base
      ]
      if len(diffs) >= 2:
        out[(*g, other)] = (*t_interval(diffs), len(diffs))
  return out


def plot_curves(
  runs: list[dict], group_by: Sequence[str], path: str | pathlib.Path, title: str = ""
) -> object:
  """Mean eval curve per group from ``fed/eval_curve``, shaded with the 95% t-interval over
  seeds at each round (:func:`t_interval`; no band for a group of one seed).

  Returns:
    The saved figure (:func:`trustml.core.plots.line_plot`, integer round ticks).
  """
  series, bands = {}, {}
  for g, rs in sorted(group(runs, group_by).items(), key=lambda kv: tuple(map(str, kv[0]))):
    curves = [
      np.asarray(r["fed/eval_curve"], dtype=np.float64) for r in rs if r.get("fed/eval_curve")
    ]
    if not curves:
      continue
    n = min(len(c) for c in curves)
    arr = np.stack([c[:n] for c in curves])
    x, y = arr[0, :, 0], arr[:, :, 1]
    label = " / ".join(map(str, g))
    series[label] = (x, y.mean(0))
    if len(curves) >= 2:
      ci = np.array([t_interval(y[:, k])[1:] for k in range(n)])
      bands[label] = (ci[:, 0], ci[:, 1])
  metric = "perplexity" if any("eval/perplexity" in r for r in runs) else "accuracy"
  return plots.line_plot(
    path,
    series,
    xlabel="round",
    ylabel=f"eval {metric}",
    title=(title + " " if title else "") + "(mean over seeds, shaded: 95% t-interval)",
    bands=bands,
    integer_x=True,
  )


def summarize(sweep_dir: str | pathlib.Path, group_by: Sequence[str], title: str = "") -> str:
  """Writes ``<sweep_dir>/plots/curves.png`` and ``<sweep_dir>/table.md``; returns the table."""
  runs = load_runs(sweep_dir)
  md = table(runs, group_by)
  plot_curves(runs, group_by, pathlib.Path(sweep_dir) / "plots" / "curves.png", title)
  (pathlib.Path(sweep_dir) / "table.md").write_text(md + "\n")
  return md


__all__ = [
  "group",
  "interval_table",
  "load_runs",
  "paired_differences",
  "plot_curves",
  "summarize",
  "t_interval",
  "table",
]
