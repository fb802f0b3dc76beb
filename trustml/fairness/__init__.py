"""Fairness: prediction sensitivity (APS), counterfactuals, group and association metrics,
counterfactual role-reversal distillation and generation disparity.

Modules:
  sensitivity: prediction sensitivity and accumulated prediction sensitivity (APS).
  counterfactual: involutive gender swapping (text and token ids), counterfactual gap.
  group_metrics: subgroup / BPSN / BNSP AUCs (sklearn), generalized mean (scipy.stats.pmean),
    parity gaps and per-group tables (fairlearn), bootstrap CIs (scipy.stats.bootstrap), the
    HateXplain protocol.
  association: WEAT, SEAT and CEAT (DerSimonian–Laird random effects).
  experiment: the library functions behind ``launch/fairness.py`` (drivers).
  study: the intrinsic-vs-extrinsic study's model specs and correlation tables.
  distill: counterfactual role-reversal knowledge distillation (objective and mitigations).
  distill_loop: teacher LM training and student distillation through the spine loop.
  lm_corpus: the distillation corpus, its swap-closed tokenizer and LM arrays.
  crr_report: the distillation experiment's template bias, summary keys and table.
  crr: the role-reversal distillation experiment (driver: corpus, teacher, students, table).
  generation: BOLD prompt generation and gender disparity.
"""

from trustml.core import entry as _entry
from trustml.fairness import (
  association,
  counterfactual,
  crr,
  crr_report,
  distill,
  distill_loop,
  experiment,
  generation,
  group_metrics,
  lm_corpus,
  sensitivity,
  study,
)
from trustml.fairness.association import ceat, random_effects, seat, weat
from trustml.fairness.counterfactual import (
  counterfactual_gap,
  load_gender_pairs,
  swap_text,
  swap_token_ids,
)
from trustml.fairness.group_metrics import bias_aucs, bootstrap_ci, gmb, per_group_table
from trustml.fairness.sensitivity import ApsOptions, accumulated_prediction_sensitivity

run = _entry.one_call(
  "trustml.fairness.experiment:run", pillar="fairness", launcher="launch/fairness.py"
)

__all__ = [
  "ApsOptions",
  "accumulated_prediction_sensitivity",
  "association",
  "bias_aucs",
  "bootstrap_ci",
  "ceat",
  "counterfactual",
  "counterfactual_gap",
  "crr",
  "crr_report",
  "distill",
  "distill_loop",
  "experiment",
  "gmb",
  "generation",
  "group_metrics",
  "lm_corpus",
  "load_gender_pairs",
  "per_group_table",
  "random_effects",
  "run",
  "seat",
  "sensitivity",
  "study",
  "swap_text",
  "swap_token_ids",
  "weat",
]
