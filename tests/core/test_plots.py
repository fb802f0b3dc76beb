"""The one plotting module: files written, axis labels, CI bars, chance lines, integer ticks.

Each plot function returns its saved figure; the tests read its axes back (labels, the lines
drawn, tick positions) rather than trusting that a PNG exists.
"""

import pathlib

import numpy as np
import pytest
from scipy import stats

from trustml.attacks import metrics, study
from trustml.core import plots
from trustml.fairness import generation
from trustml.federated import report

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _has_hline(ax, value):
  return any(
    len(line.get_ydata()) == 2 and np.allclose(line.get_ydata(), value) for line in ax.get_lines()
  )


def _integer_ticks(ax):
  ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
  return len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


def test_matplotlib_is_imported_only_by_core_plots():
  users = [
    str(p.relative_to(ROOT))
    for p in (ROOT / "trustml").rglob("*.py")
    if "matplotlib" in p.read_text()
  ]
  assert users == ["trustml/core/plots.py"]


def test_bar_chart_labels_ci_bars_and_chance_line(tmp_path):
  fig = plots.bar_chart(
    tmp_path / "p" / "b.png",
    {"x": 0.6, "y": 0.7},
    xlabel="community",
    ylabel="AUC",
    title="t",
    ci={"x": (0.5, 0.75)},
    chance=0.5,
  )
  assert (tmp_path / "p" / "b.png").stat().st_size > 1000
  (ax,) = fig.axes
  assert (ax.get_xlabel(), ax.get_ylabel()) == ("community", "AUC")
  assert _has_hline(ax, 0.5)
  (bars,) = [c for c in ax.containers if hasattr(c, "errorbar")]
  segments = bars.errorbar.lines[2][0].get_segments()
  np.testing.assert_allclose(segments[0][:, 1], [0.5, 0.75])  # x's CI
  np.testing.assert_allclose(segments[1][:, 1], [0.7, 0.7])  # y has none: zero-length


def test_roc_curves_draw_the_chance_diagonal_and_references(tmp_path):
  fig = plots.roc_curves(
    tmp_path / "roc.png",
    {"a": ([0.0, 0.1, 1.0], [0.0, 0.5, 1.0])},
    references={"bound": ([1e-3, 1.0], [1e-2, 1.0])},
    resolution=0.1,
  )
  (ax,) = fig.axes
  diag = ax.get_lines()[0]
  np.testing.assert_allclose(diag.get_xdata(), diag.get_ydata())
  assert diag.get_label().startswith("chance")
  assert "FPR" in ax.get_xlabel() and "TPR" in ax.get_ylabel()
  assert ax.get_xscale() == ax.get_yscale() == "log"
  assert {"a", "bound"} <= {line.get_label() for line in ax.get_lines()}


def test_line_plot_integer_round_ticks_and_bands(tmp_path):
  x = np.arange(1, 8)
  fig = plots.line_plot(
    tmp_path / "c.png",
    {"s": (x, np.sqrt(x))},
    xlabel="round",
    ylabel="eval accuracy",
    bands={"s": (np.sqrt(x) - 0.1, np.sqrt(x) + 0.1)},
    integer_x=True,
  )
  (ax,) = fig.axes
  assert _integer_ticks(ax) and ax.get_xlabel() == "round"
  assert len(ax.collections) == 1  # The band.


def test_panel_grid_chance_identity_and_labels(tmp_path):
  fig = plots.panel_grid(
    tmp_path / "g.png",
    [1.0, 4.0, 16.0],
    [
      plots.Panel("MIA AUC", [0.5, 0.55, 0.6], chance=0.5, hlines={"defense": 0.52}),
      plots.Panel("audit", [0.2, 0.9, 2.0], identity=True),
    ],
    xlabel="ε",
    log_x=True,
  )
  auc, audit, spare = fig.axes
  assert _has_hline(auc, 0.5) and _has_hline(auc, 0.52)
  assert auc.get_xlabel() == "ε" and auc.get_ylabel() == "MIA AUC"
  assert any(
    np.allclose(line.get_xdata(), line.get_ydata()) and len(line.get_xdata()) == 3
    for line in audit.get_lines()
  )
  assert not spare.get_visible()


def test_grouped_bar_chart(tmp_path):
  fig = plots.grouped_bar_chart(
    tmp_path / "gb.png",
    ["g1", "g2", "g3"],
    {"plain": [0.1, 0.2, np.nan], "cda": [0.3, 0.1, 0.0]},
    xlabel="group",
    ylabel="disparity",
    title="t",
    ylim=(0.0, 1.2),
  )
  (ax,) = fig.axes
  assert len(ax.patches) == 6 and ax.get_ylim() == (0.0, 1.2)
  assert [t.get_text() for t in ax.get_xticklabels()] == ["g1", "g2", "g3"]


def test_plot_roc_of_the_attacks_draws_chance_and_the_dp_bound(tmp_path):
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 200)
  curve = metrics.roc_curve(rng.normal(size=200) + y, y)
  fig = metrics.plot_roc({"loss": curve}, str(tmp_path / "roc.png"), epsilon=2.0, delta=1e-5)
  (ax,) = fig.axes
  labels = [line.get_label() for line in ax.get_lines()]
  assert labels[0].startswith("chance") and any("bound" in lab for lab in labels)
  assert any(lab.startswith("loss (AUC") for lab in labels)


def test_attack_study_plot_has_a_chance_line_on_the_auc_panel(tmp_path):
  rows = [
    {"name": f"eps_{e}", "privacy/epsilon": e, "eval/accuracy": 0.8, "mia/auc": 0.5 + 0.01 * i}
    for i, e in enumerate([1.0, 4.0, float("inf")])
  ]
  fig = study.plot(rows, str(tmp_path / "s.png"))
  by_title = {ax.get_title(): ax for ax in fig.axes}
  assert _has_hline(by_title["MIA AUC"], 0.5)
  assert not _has_hline(by_title["accuracy"], 0.5)
  assert [t.get_text() for t in by_title["MIA AUC"].get_xticklabels()][-1] == "∞"


def test_federated_curves_integer_rounds_and_95_percent_bands(tmp_path):
  curve = [[r, 0.1 * r] for r in (2, 4, 6, 8)]
  runs = [
    {"fed/sampler": "uniform", "seed": s, "fed/eval_curve": [[r, v + 0.01 * s] for r, v in curve]}
    for s in range(3)
  ]
  fig = report.plot_curves(runs, ("fed/sampler",), tmp_path / "curves.png")
  (ax,) = fig.axes
  assert _integer_ticks(ax) and ax.get_xlabel() == "round"
  (band,) = ax.collections
  ys = np.array([0.2 + 0.01 * s for s in range(3)])  # Round 2 over the three seeds.
  lo, hi = stats.t.interval(0.95, 2, loc=ys.mean(), scale=stats.sem(ys))
  verts = band.get_paths()[0].vertices
  at_round_2 = verts[np.isclose(verts[:, 0], 2.0), 1]
  assert min(at_round_2) == pytest.approx(lo) and max(at_round_2) == pytest.approx(hi)


def test_group_disparity_plot(tmp_path):
  res = {"per_group": {"a": {"disparity": 0.5}, "b": {"disparity": 0.25}}}
  fig = generation.plot_group_disparity({"plain": res, "cda": res}, tmp_path / "d.png", "t")
  (ax,) = fig.axes
  assert ax.get_xlabel() and ax.get_ylabel() and len(ax.patches) == 4
  assert (tmp_path / "d.png").is_file()
