"""Practical privacy attacks: membership inference, DP audits, canary exposure and extraction.

JAX computes scores (losses, logit-scaled confidences, relaxed inversions, shadow models trained
as one vmapped program); NumPy/SciPy turns them into ROC curves, TPR at low FPR, Clopper–Pearson
and one-run ε lower bounds, and exposures.
"""

from trustml.attacks import audit, exposure, extraction, lira, metrics, shadow, study
from trustml.core import entry as _entry

# ``trustml.attacks.experiment`` (train-then-attack) is imported on demand (by ``run``): it pulls
# in the training loop and data sources.
run = _entry.one_call(
  "trustml.attacks.experiment:run", pillar="attacks", launcher="launch/attack.py"
)

__all__ = ["audit", "exposure", "extraction", "lira", "metrics", "run", "shadow", "study"]
