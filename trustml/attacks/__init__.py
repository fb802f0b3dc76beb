"""Practical privacy attacks: membership inference, DP audits, canary exposure and extraction.

JAX computes scores (losses, logit-scaled confidences, relaxed inversions, shadow models trained
as one vmapped program); NumPy/SciPy turns them into ROC curves, TPR at low FPR, Clopper–Pearson
and one-run ε lower bounds, and exposures.
"""

from trustml.attacks import audit
from trustml.attacks import exposure
from trustml.attacks import extraction
from trustml.attacks import lira
from trustml.attacks import metrics
from trustml.attacks import shadow

__all__ = ["audit", "exposure", "extraction", "lira", "metrics", "shadow"]
