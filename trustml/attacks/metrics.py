"""Membership-inference metrics: ROC (with its AUROC), balanced accuracy, TPR at low FPR, ROC plots.

Scores are "higher means member". Everything here is NumPy: JAX produces the scores, this module
turns them into statistics (house rule: JAX for scores, NumPy/SciPy for statistics).

The ROC is scikit-learn's full curve (``sklearn.metrics.roc_curve(drop_intermediate=False)``):
one point per distinct threshold, starting at ``(0, 0)`` (threshold ``+inf``) and ending at
``(1, 1)``. Its area is ``sklearn.metrics.roc_auc_score`` (ties count one half), stored on the
curve as ``auc``: the project's one AUROC (fairness uses the same call). ``tpr_at_fpr`` reads the
curve by linear interpolation along the ROC polyline, which is the TPR a randomised threshold
achieves at exactly that FPR.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as skm

from trustml.core import plots, validation


@dataclasses.dataclass(frozen=True)
class RocCurve:
  """A ROC curve.

  Attributes:
    fpr: false-positive rates, non-decreasing, from 0 to 1.
    tpr: true-positive rates, non-decreasing, from 0 to 1.
    thresholds: the threshold of each point (predict member iff ``score >= threshold``);
      the first is ``+inf``.
    auc: ``sklearn.metrics.roc_auc_score`` of the scores and labels.
  """

  fpr: np.ndarray
  tpr: np.ndarray
  thresholds: np.ndarray
  auc: float


def _scores_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  scores = validation.finite_array("scores", np.asarray(scores, dtype=np.float64).reshape(-1))
  labels = np.asarray(labels).reshape(-1).astype(bool)
  validation.same_length(scores=scores, labels=labels)
  if labels.all() or not labels.any():
    raise validation.ConfigError("labels must contain both members (1) and non-members (0)")
  return scores, labels


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> RocCurve:
  """The full ROC curve of a score (higher = member).

  Args:
    scores: ``[N]`` attack scores.
    labels: ``[N]`` membership labels (1 member, 0 non-member); both must occur.

  Returns:
    A :class:`RocCurve` with one point per distinct threshold plus ``(0, 0)``.

  Raises:
    ConfigError: on mismatched lengths, non-finite scores or single-class labels.

  Example:
    >>> roc_curve([0.1, 0.9], [0, 1]).tpr.tolist()
    [0.0, 1.0, 1.0]
  """
  scores, labels = _scores_labels(scores, labels)
  fpr, tpr, thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
  auc = float(skm.roc_auc_score(labels, scores))
  return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds, auc=auc)


def tpr_at_fpr(curve: RocCurve, fpr: float) -> float:
  """TPR at a target FPR, interpolated linearly along the ROC polyline.

  At an FPR where the curve rises vertically the top of the rise is returned. Between two
  points the value is the straight line, i.e. what a threshold randomised between them gets.

  Args:
    curve: a :class:`RocCurve`.
    fpr: target false-positive rate in ``(0, 1)``.

  Returns:
    The interpolated TPR.

  Raises:
    ConfigError: if ``fpr`` is outside ``(0, 1)``.
  """
  target = validation.in_range("fpr", fpr, 0.0, 1.0)
  xs, ys = curve.fpr, curve.tpr
  k = int(np.searchsorted(xs, target, side="right")) - 1  # last point with fpr <= target
  if k >= len(xs) - 1:
    return float(ys[-1])
  x0, x1, y0, y1 = xs[k], xs[k + 1], ys[k], ys[k + 1]
  return float(y0 + (target - x0) / (x1 - x0) * (y1 - y0))


def balanced_accuracy(curve: RocCurve) -> float:
  """Best balanced accuracy ``max_t (TPR + TNR) / 2`` over thresholds.

  Equals ``(1 + advantage) / 2`` with the membership advantage ``max_t TPR - FPR`` of
  Yeom et al. (2018).
  """
  return float(np.max((curve.tpr + 1.0 - curve.fpr) / 2.0))


def membership_advantage(curve: RocCurve) -> float:
  """Membership advantage ``max_t TPR(t) - FPR(t)`` (Yeom et al. 2018)."""
  return float(np.max(curve.tpr - curve.fpr))


def dp_tradeoff_bound(fpr: ArrayLike, epsilon: float, delta: float) -> np.ndarray:
  """The largest TPR an (ε, δ)-DP mechanism allows at each FPR.

  ``TPR <= min(e^ε FPR + δ, 1 - e^{-ε} (1 - δ - FPR), 1)`` (Kairouz et al. 2015).

  Args:
    fpr: false-positive rates in ``[0, 1]``.
    epsilon: ε >= 0 (``inf`` gives the trivial bound 1).
    delta: δ in ``[0, 1]``.

  Returns:
    The TPR bound at each ``fpr``.
  """
  fpr = np.asarray(fpr, dtype=np.float64)
  if math.isinf(epsilon):
    return np.ones_like(fpr)
  a = np.exp(epsilon) * fpr + delta
  b = 1.0 - np.exp(-epsilon) * (1.0 - delta - fpr)
  return np.clip(np.minimum(a, b), 0.0, 1.0)


def profile_tradeoff_bound(fpr: ArrayLike, epsilons: ArrayLike, deltas: ArrayLike) -> np.ndarray:
  """The tighter trade-off curve from a whole privacy profile ``δ(ε)``.

  A mechanism that is (ε_i, δ_i)-DP for every i satisfies every per-(ε_i, δ_i) bound, so the
  tightest TPR bound is their pointwise minimum. Feed it ``δ(ε)`` on a grid from an accountant
  (e.g. dp_accounting's PLD accountant ``get_delta_for_epsilon``).

  Args:
    fpr: false-positive rates in ``[0, 1]``.
    epsilons: ``[K]`` grid of ε values.
    deltas: ``[K]`` the δ the accountant gives at each ε.

  Returns:
    The TPR bound at each ``fpr``.
  """
  fpr = np.asarray(fpr, dtype=np.float64)
  out = np.ones_like(fpr)
  for eps, dlt in zip(np.asarray(epsilons, float), np.asarray(deltas, float), strict=True):
    out = np.minimum(out, dp_tradeoff_bound(fpr, float(eps), float(dlt)))
  return out


def plot_roc(
  curves: dict[str, RocCurve],
  path: str,
  *,
  epsilon: float | None = None,
  delta: float | None = None,
  tradeoff_fn: Callable[[np.ndarray], np.ndarray] | None = None,
  title: str = "Membership inference ROC",
) -> Any:
  """Saves ROC curves on log-log axes beside the DP bounds for the run's (ε, δ).

  The figure (:func:`trustml.core.plots.roc_curves`) draws the chance diagonal, each curve
  with its AUC, the FPR resolution 1/#non-members, the (ε, δ) trade-off bound and the
  accountant's trade-off curve when given.

  Args:
    curves: legend label -> curve.
    path: output ``.png`` path (parent folders are created).
    epsilon: the run's ε (``None`` or ``inf``: no bound is drawn).
    delta: the run's δ.
    tradeoff_fn: optional ``fpr -> tpr bound`` from the accountant (tighter than (ε, δ)).
    title: figure title.

  Returns:
    The saved figure.
  """
  grid = np.logspace(-5, 0, 400)
  references = {}
  if epsilon is not None and delta is not None and not math.isinf(epsilon):
    references[f"(ε={epsilon:.3g}, δ={delta:.1e}) bound"] = (
      grid,
      dp_tradeoff_bound(grid, epsilon, delta),
    )
  if tradeoff_fn is not None:
    references["accountant trade-off"] = (grid, tradeoff_fn(grid))
  # Below 1/#non-members the empirical ROC is not resolved (its first segment starts at FPR 0).
  resolution = min(
    (float(c.fpr[c.fpr > 0].min()) for c in curves.values() if (c.fpr > 0).any()), default=None
  )
  return plots.roc_curves(
    path,
    {f"{name} (AUC {c.auc:.3f})": (c.fpr, c.tpr) for name, c in curves.items()},
    references=references,
    resolution=resolution,
    title=title,
  )


__all__ = [
  "RocCurve",
  "balanced_accuracy",
  "dp_tradeoff_bound",
  "membership_advantage",
  "plot_roc",
  "profile_tradeoff_bound",
  "roc_curve",
  "tpr_at_fpr",
]
