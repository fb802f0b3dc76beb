"""The intrinsic-vs-extrinsic study's pure parts: model specs, model configs, correlation tables.

The driver (:func:`trustml.fairness.experiment.run_study`) trains the K models and scores them;
this module parses ``fairness.study_models``, builds each model's config, and turns the per-model
rows into Pearson/Spearman correlations (scipy) and markdown tables.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from scipy import stats

from trustml.core import validation
from trustml.models import registry


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
  """Pearson and Spearman correlations (scipy); NaN with fewer than 3 points or no variance."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 3 or np.std(x) == 0 or np.std(y) == 0:
    return {"pearson": float("nan"), "spearman": float("nan")}
  return {
    "pearson": float(stats.pearsonr(x, y)[0]),
    "spearman": float(stats.spearmanr(x, y)[0]),
  }


@dataclasses.dataclass(frozen=True)
class StudyModel:
  """One model of the study: architecture, width (embed_dim) and seed."""

  arch: str
  width: int
  seed: int

  @property
  def name(self) -> str:
    return f"{self.arch}-{self.width}-s{self.seed}"


def parse_study_models(specs: Sequence[str]) -> list[StudyModel]:
  """Parses ``"arch-width-sSEED"`` strings (e.g. ``"cnn-32-s1"``).

  Raises:
    ConfigError: on malformed specs or unknown architectures.
  """
  out = []
  for spec in specs:
    parts = str(spec).split("-")
    if (
      len(parts) != 3 or not parts[1].isdigit() or not parts[2][1:].isdigit() or parts[2][0] != "s"
    ):
      raise validation.ConfigError(
        f"fairness.study_models entry {spec!r} is invalid: must look like 'cnn-32-s1'"
      )
    validation.one_of("fairness.study_models arch", parts[0], ("bag", "cnn", "transformer"))
    out.append(StudyModel(parts[0], int(parts[1]), int(parts[2][1:])))
  return out


def study_model_config(m: StudyModel) -> ml_collections.ConfigDict:
  """Model section of one study model: width ``m.width``, 1-layer transformers, no dropout."""
  cfg = registry.default_model_config(m.arch)
  cfg.embed_dim = m.width
  for key in ("hidden_dim", "num_filters", "mlp_dim"):
    if key in cfg:
      cfg[key] = 2 * m.width if key != "num_filters" else m.width
  if "num_layers" in cfg:
    cfg.num_layers = 1
    cfg.num_heads = 2
    cfg.dropout_rate = 0.0
  return cfg


INTRINSIC = ("association/mean_abs_effect_size", "association/ceat/effect_size")
EXTRINSIC = (
  "bias_auc/gmb_subgroup",
  "bias_auc/gmb_bpsn",
  "bias_auc/gmb_bnsp",
  "fairness/counterfactual_gap",
  "fairness/aps",
)


def correlation_tables(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], str]:
  """Correlations of every intrinsic with every extrinsic score across the study's models.

  Args:
    rows: one dict per model (``model``, the :data:`INTRINSIC` and :data:`EXTRINSIC` keys).

  Returns:
    ``(summary, markdown)``: ``study/pearson/<i>~<e>`` and ``study/spearman/<i>~<e>`` keys,
    and the per-model table followed by the correlation table.
  """
  summary: dict[str, Any] = {"study/num_models": len(rows)}
  table = ["| intrinsic | extrinsic | Pearson r | Spearman ρ |", "|---|---|---|---|"]
  for i in INTRINSIC:
    for e in EXTRINSIC:
      x = np.array([r.get(i, np.nan) for r in rows], np.float64)
      y = np.array([r.get(e, np.nan) for r in rows], np.float64)
      c = correlations(x, y)
      summary[f"study/pearson/{i}~{e}"] = c["pearson"]
      summary[f"study/spearman/{i}~{e}"] = c["spearman"]
      table.append(f"| {i} | {e} | {c['pearson']:.3f} | {c['spearman']:.3f} |")
  # Per model: does the sensitivity score track the counterfactual gap across models?
  for a, b in (("fairness/aps", "fairness/counterfactual_gap"),):
    c = correlations([r[a] for r in rows], [r[b] for r in rows])
    summary[f"study/pearson/{a}~{b}"] = c["pearson"]
    summary[f"study/spearman/{a}~{b}"] = c["spearman"]
    table.append(f"| {a} (per model) | {b} | {c['pearson']:.3f} | {c['spearman']:.3f} |")
  cols = ("model", "eval/accuracy", *INTRINSIC, *EXTRINSIC, "fairness/aps_gap_spearman")
  per_model = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    cells = [r["model"]] + [f"{float(r.get(c, np.nan)):.4f}" for c in cols[1:]]
    per_model.append("| " + " | ".join(cells) + " |")
  return summary, "\n".join(per_model) + "\n\n" + "\n".join(table) + "\n"


__all__ = [
  "EXTRINSIC",
  "INTRINSIC",
  "StudyModel",
  "correlation_tables",
  "correlations",
  "parse_study_models",
  "study_model_config",
]
