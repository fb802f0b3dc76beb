"""Tables and curve plots over the runs of a federated sweep (mean +- std across seeds).

Example:
  >>> from trustml.federated import report
  >>> md = report.summarize("/tmp/sel_sweep", group_by=("fed/sampler", "fed/setting"))  # doctest: +SKIP
"""

import json
import pathlib
from collections.abc import Sequence

import numpy as np


def load_runs(sweep_dir: str | pathlib.Path) -> list[dict]:
  """Summaries of every finished run under ``sweep_dir`` (``<run>/summary.json``), with ``run``."""
  runs = []
  for path in sorted(pathlib.Path(sweep_dir).glob("*/summary.json")):
    s = json.loads(path.read_text())
    s["run"] = path.parent.name
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


def plot_curves(
  runs: list[dict], group_by: Sequence[str], path: str | pathlib.Path, title: str = ""
) -> None:
  """Mean eval curve per group (shaded +- std over seeds) from ``fed/eval_curve``."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  for g, rs in sorted(group(runs, group_by).items(), key=lambda kv: tuple(map(str, kv[0]))):
    curves = [
      np.asarray(r["fed/eval_curve"], dtype=np.float64) for r in rs if r.get("fed/eval_curve")
    ]
    if not curves:
      continue
    n = min(len(c) for c in curves)
    arr = np.stack([c[:n] for c in curves])
    x, y = arr[0, :, 0], arr[:, :, 1]
    ax.plot(x, y.mean(0), marker="o", ms=2, label=" / ".join(map(str, g)))
    ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), alpha=0.2)
  metric = "perplexity" if any("eval/perplexity" in r for r in runs) else "accuracy"
  ax.set_xlabel("round")
  ax.set_ylabel(f"eval {metric}")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def summarize(sweep_dir: str | pathlib.Path, group_by: Sequence[str], title: str = "") -> str:
  """Writes ``<sweep_dir>/plots/curves.png`` and ``<sweep_dir>/table.md``; returns the table."""
  runs = load_runs(sweep_dir)
  md = table(runs, group_by)
  plot_curves(runs, group_by, pathlib.Path(sweep_dir) / "plots" / "curves.png", title)
  (pathlib.Path(sweep_dir) / "table.md").write_text(md + "\n")
  return md


__all__ = ["group", "load_runs", "plot_curves", "summarize", "table"]
