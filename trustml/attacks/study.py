"""The privacy study table: ε beside accuracy and measured leakage, correlations and a plot.

Each row is one run's ``summary.json`` (``launch/attack.py`` via ``launch/sweep.py``). The
study reports, per run: ε (``inf`` for non-private runs), accuracy, canary MIA AUC, TPR at
0.1 % FPR, the audit's ε lower bound, mean exposure and extraction exact-match; and over the
ε-sweep rows (not the non-DP defense rows) the Spearman rank correlation between ε and each
leakage measure (``inf`` ranks above every finite ε).
"""

import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from trustml.core import plots, validation

COLUMNS = (
  ("privacy/epsilon", "ε"),
  ("eval/accuracy", "accuracy"),
  ("mia/auc", "MIA AUC"),
  ("mia/tpr_at_0.001_fpr", "TPR@0.1%FPR"),
  ("audit/epsilon_lower_bound", "audit ε_LB"),
  ("canary/exposure_mean", "mean exposure (bits)"),
  ("canary/extraction_exact_match", "extraction exact-match"),
)
LEAKAGE = COLUMNS[2:]


def _num(v: Any) -> float:
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")


def summarize(table: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Spearman correlations between ε and each leakage measure over the ε-sweep rows.

  Args:
    table: rows with the summary keys of :data:`COLUMNS` and a ``name``; rows whose name starts
      with ``defense_`` are non-DP defenses and are left out of the correlation.

  Returns:
    ``{"spearman/<key>": rho, "spearman_p/<key>": p, "num_rows": n}``.
  """
  rows = [r for r in table if not str(r.get("name", "")).startswith("defense_")]
  eps = np.array([_num(r.get("privacy/epsilon")) for r in rows])
  out: dict[str, Any] = {"num_rows": len(rows)}
  for key, _ in LEAKAGE:
    vals = np.array([_num(r.get(key)) for r in rows])
    ok = ~np.isnan(eps) & ~np.isnan(vals)
    if ok.sum() >= 3 and np.ptp(vals[ok]) > 0:
      rho, p = stats.spearmanr(eps[ok], vals[ok])
      out[f"spearman/{key}"], out[f"spearman_p/{key}"] = float(rho), float(p)
    else:
      out[f"spearman/{key}"], out[f"spearman_p/{key}"] = float("nan"), float("nan")
  return out


def to_markdown(table: Sequence[Mapping[str, Any]]) -> str:
  """The study table in markdown (one row per run)."""
  head = "| run | " + " | ".join(label for _, label in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
  for r in table:
    cells = []
    for key, _ in COLUMNS:
      v = _num(r.get(key))
      cells.append("∞" if math.isinf(v) else ("" if math.isnan(v) else f"{v:.3g}"))
    lines.append(f"| {r.get('name', '')} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(table: Sequence[Mapping[str, Any]], path: str) -> Any:
  """Saves ``privacy_utility_leakage.png``: accuracy and each leakage measure against ε.

  One panel per measure (:func:`trustml.core.plots.panel_grid`): the ε-sweep rows as a curve
  (non-private runs at a stand-in x labelled ∞), the non-DP defense rows as dotted lines, the
  chance line 0.5 on the MIA AUC panel and ``ε_LB = ε`` on the audit panel.

  Returns:
    The saved figure.
  """
  rows = [r for r in table if not str(r.get("name", "")).startswith("defense_")]
  defenses = [r for r in table if str(r.get("name", "")).startswith("defense_")]
  eps = np.array([_num(r.get("privacy/epsilon")) for r in rows])
  finite = eps[np.isfinite(eps)]
  inf_x = (finite.max() * 4) if finite.size else 1.0
  x = np.where(np.isinf(eps), inf_x, eps)
  ticks = list(np.sort(np.unique(finite))) + [inf_x]
  panels = [
    plots.Panel(
      title=label,
      y=[_num(r.get(key)) for r in rows],
      hlines={str(d.get("name", ""))[8:]: _num(d.get(key)) for d in defenses},
      identity=key == "audit/epsilon_lower_bound",
      chance=0.5 if key == "mia/auc" else None,
    )
    for key, label in COLUMNS[1:]
  ]
  return plots.panel_grid(
    path,
    x,
    panels,
    xlabel="ε",
    series_label="DP-SGD / non-private",
    xticks=ticks,
    xticklabels=[f"{t:.2g}" for t in ticks[:-1]] + ["∞"],
    log_x=True,
    suptitle="Privacy, utility and measured leakage (dotted: non-DP defenses)",
  )


def summarize_dir(sweep_dir: str) -> dict[str, Any]:
  """Reads every ``<sweep_dir>/<run>/summary.json``, writes the study table, correlations and plot.

  Writes ``study.md``, ``study.json`` and ``plots/privacy_utility_leakage.png`` in ``sweep_dir``.

  Args:
    sweep_dir: the ``launch/sweep.py`` workdir.

  Returns:
    The correlations (as :func:`summarize`).

  Raises:
    ConfigError: if ``sweep_dir`` is not a directory or holds no finished run.
  """
  root = pathlib.Path(sweep_dir)
  if not root.is_dir():
    raise validation.ConfigError(f"summarize={sweep_dir!r} is invalid: not a directory")
  table = []
  for path in sorted(root.glob("*/summary.json")):
    row = json.loads(path.read_text())
    row["name"] = path.parent.name
    table.append(row)
  if not table:
    raise validation.ConfigError(
      f"summarize={sweep_dir!r} is invalid: no <run>/summary.json under it "
      "(run launch.sweep with --launcher=launch.attack into it first)"
    )
  corr = summarize(table)
  md = to_markdown(table) + "\n\nSpearman ρ(ε, measure) over the ε-sweep rows:\n\n"
  md += "\n".join(
    f"- {label}: ρ = {corr[f'spearman/{key}']:.3g} (p = {corr[f'spearman_p/{key}']:.3g})"
    for key, label in LEAKAGE
  )
  (root / "study.md").write_text(md + "\n")
  (root / "study.json").write_text(
    json.dumps({"rows": table, "correlations": corr}, indent=1, default=str)
  )
  plot(table, str(root / "plots" / "privacy_utility_leakage.png"))
  return corr


__all__ = ["COLUMNS", "plot", "summarize", "summarize_dir", "to_markdown"]
