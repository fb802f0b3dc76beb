"""Empirical lower bounds on ε from canary trials (privacy auditing).

Two auditors:

* **Threshold audit** (Jagielski et al. 2020; Nasr et al. 2021): many trials, each a canary
  that was IN or OUT of training, each scored by an attack. At a threshold ``t``, the TPR and
  FPR of "score >= t" get Clopper–Pearson intervals, and (ε, δ)-DP implies both
  ``TPR <= e^ε FPR + δ`` and ``TNR <= e^ε FNR + δ``, so

  ``ε_LB = max( ln((TPR_lo − δ) / FPR_hi), ln((1 − FPR_hi − δ) / (1 − TPR_lo)) )``.

  The threshold is chosen on a held-out share of the trials (the best ε over all thresholds
  there), then the bound is computed once on the remaining trials, so no multiple-testing
  correction is needed. With two-sided intervals at level ``confidence``, each one-sided limit
  fails with probability at most ``(1 − confidence) / 2``; by the union bound ``ε_LB <= ε``
  holds with probability at least ``confidence``.

* **One-run audit** (Steinke, Nasr & Jagielski 2023): m canaries, each included independently
  with probability ½ in ONE training run. The auditor guesses IN for the ``k_pos`` highest
  scores and OUT for the ``k_neg`` lowest, abstaining on the rest; under (ε, δ)-DP the number
  of correct guesses is dominated by Binomial(r, e^ε / (1 + e^ε)) up to a δ term, and ε_LB is
  the largest ε that this test rejects at level ``1 − confidence``.
"""

import dataclasses
import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from trustml.core import validation


def clopper_pearson(
  successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
  """Two-sided Clopper–Pearson (exact binomial) interval.

  Args:
    successes: number of successes ``k`` (array or int).
    trials: number of trials ``n >= k``.
    confidence: two-sided confidence level in ``(0, 1)``.

  Returns:
    ``(lower, upper)``: ``Beta(α/2; k, n−k+1)`` and ``Beta(1−α/2; k+1, n−k)`` quantiles, with
    ``lower = 0`` when ``k = 0`` and ``upper = 1`` when ``k = n``.

  Raises:
    ConfigError: on a confidence outside ``(0, 1)`` or ``k > n``.
  """
  validation.in_range("confidence", confidence, 0.0, 1.0)
  k = np.asarray(successes, dtype=np.float64)
  n = np.asarray(trials, dtype=np.float64)
  if np.any(k < 0) or np.any(k > n):
    raise validation.ConfigError("successes must be in [0, trials]")
  alpha = 1.0 - confidence
  with np.errstate(invalid="ignore", divide="ignore"):
    lower = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    upper = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
  return lower, upper


def _rates(scores_in: np.ndarray, scores_out: np.ndarray, thresholds: np.ndarray):
  s_in = np.sort(scores_in)
  s_out = np.sort(scores_out)
  tp = len(s_in) - np.searchsorted(s_in, thresholds, side="left")
  fp = len(s_out) - np.searchsorted(s_out, thresholds, side="left")
  return tp, fp


def epsilon_at_thresholds(
  scores_in: ArrayLike,
  scores_out: ArrayLike,
  thresholds: ArrayLike,
  *,
  delta: float,
  confidence: float = 0.95,
) -> np.ndarray:
  """ε lower bound of the test "score >= t" at each threshold ``t`` (both forms, the larger).

  Args:
    scores_in: attack scores of trials whose canary was IN (higher = member).
    scores_out: scores of trials whose canary was OUT.
    thresholds: ``[K]`` thresholds.
    delta: the δ of the guarantee being audited, in ``[0, 1)``.
    confidence: Clopper–Pearson level (see the module docstring).

  Returns:
    ``[K]`` ε bounds, floored at 0 (0 also where the bound is undefined).
  """
  validation.in_range("delta", delta, 0.0, 1.0, low_inclusive=True)
  s_in = np.asarray(scores_in, dtype=np.float64)
  s_out = np.asarray(scores_out, dtype=np.float64)
  thresholds = np.asarray(thresholds, dtype=np.float64)
  tp, fp = _rates(s_in, s_out, thresholds)
  tpr_lo, _ = clopper_pearson(tp, len(s_in), confidence)
  _, fpr_hi = clopper_pearson(fp, len(s_out), confidence)
  with np.errstate(divide="ignore", invalid="ignore"):
    eps1 = np.log((tpr_lo - delta) / fpr_hi)
    eps2 = np.log((1.0 - fpr_hi - delta) / (1.0 - tpr_lo))
  eps = np.fmax(eps1, eps2)
  return np.where(np.isfinite(eps) & (eps > 0), eps, 0.0)


@dataclasses.dataclass(frozen=True)
class AuditResult:
  """Outcome of an audit.

  Attributes:
    epsilon_lower_bound: ε_LB (>= 0), valid with probability >= ``confidence``.
    threshold: the score threshold used (threshold audit) or NaN (one-run audit).
    num_guesses: trials the bound was computed on (threshold) or guesses made (one run).
    num_correct: correct guesses (one-run audit) or true positives (threshold audit).
    confidence: the confidence level.
  """

  epsilon_lower_bound: float
  threshold: float
  num_guesses: int
  num_correct: int
  confidence: float


def threshold_audit(
  scores_in: ArrayLike,
  scores_out: ArrayLike,
  *,
  delta: float,
  confidence: float = 0.95,
  selection_fraction: float = 0.5,
  seed: int = 0,
) -> AuditResult:
  """Clopper–Pearson audit with the threshold chosen on held-out trials.

  Args:
    scores_in: scores of IN trials (higher = member).
    scores_out: scores of OUT trials.
    delta: δ of the audited guarantee.
    confidence: probability that the returned bound is valid.
    selection_fraction: share of each trial set used only to pick the threshold.
    seed: seed of the split into selection and evaluation trials.

  Returns:
    An :class:`AuditResult`.

  Raises:
    ConfigError: on fewer than 2 trials per side or fractions outside ``(0, 1)``.

  **Formal guarantees:** if the training run that produced the IN/OUT trials is (ε, δ)-DP
  with respect to adding/removing one canary, and trials are independent, then
  ``P[ε_LB > ε] <= 1 − confidence``. Not covered: dependence between trials drawn from one
  training run (use :func:`one_run_audit` for that design).
  """
  validation.in_range("selection_fraction", selection_fraction, 0.0, 1.0)
  s_in = np.asarray(scores_in, dtype=np.float64).reshape(-1)
  s_out = np.asarray(scores_out, dtype=np.float64).reshape(-1)
  if len(s_in) < 4 or len(s_out) < 4:
    raise validation.ConfigError("threshold_audit needs at least 4 IN and 4 OUT trials")
  rng = np.random.default_rng(seed)
  p_in, p_out = rng.permutation(len(s_in)), rng.permutation(len(s_out))
  n_in = max(1, int(round(selection_fraction * len(s_in))))
  n_out = max(1, int(round(selection_fraction * len(s_out))))
  sel_in, eval_in = s_in[p_in[:n_in]], s_in[p_in[n_in:]]
  sel_out, eval_out = s_out[p_out[:n_out]], s_out[p_out[n_out:]]
  candidates = np.unique(np.r_[sel_in, sel_out])
  eps_sel = epsilon_at_thresholds(sel_in, sel_out, candidates, delta=delta, confidence=confidence)
  threshold = float(candidates[int(np.argmax(eps_sel))])
  eps = epsilon_at_thresholds(eval_in, eval_out, [threshold], delta=delta, confidence=confidence)
  tp, _ = _rates(eval_in, eval_out, np.asarray([threshold]))
  return AuditResult(
    epsilon_lower_bound=float(eps[0]),
    threshold=threshold,
    num_guesses=len(eval_in) + len(eval_out),
    num_correct=int(tp[0]),
    confidence=confidence,
  )


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
  """P[≥ v correct of r guesses] under the (ε, δ)-DP null (Steinke et al. 2023, Thm 5.2).

  Args:
    m: number of canaries (each included with probability ½).
    r: guesses made (abstentions excluded).
    v: correct guesses.
    epsilon: ε >= 0 of the null hypothesis.
    delta: δ of the null hypothesis.

  Returns:
    The p-value (capped at 1).
  """
  if not 0 <= v <= r <= m:
    raise validation.ConfigError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
  q = 1.0 / (1.0 + math.exp(-epsilon))
  tail = float(stats.binom.sf(v - 1, r, q))
  if delta == 0 or v == 0:
    return min(tail, 1.0)
  # alpha = max_i P[v - i <= Bin(r, q) < v] / i, the δ-slack of the theorem.
  i = np.arange(1, v + 1)
  partial = np.cumsum(stats.binom.pmf(v - i, r, q))
  alpha = float(np.max(partial / i))
  return min(tail + alpha * delta * 2 * m, 1.0)


def one_run_audit(
  scores: ArrayLike,
  included: ArrayLike,
  *,
  delta: float,
  num_positive_guesses: int,
  num_negative_guesses: int = 0,
  confidence: float = 0.95,
) -> AuditResult:
  """One-run audit (Steinke, Nasr & Jagielski 2023).

  Args:
    scores: ``[m]`` attack scores of the canaries (higher = member).
    included: ``[m]`` whether each canary was trained on (drawn with probability ½).
    delta: δ of the audited guarantee.
    num_positive_guesses: guesses IN for the top-scoring canaries.
    num_negative_guesses: guesses OUT for the lowest-scoring canaries.
    confidence: probability that the returned bound is valid.

  Returns:
    An :class:`AuditResult` with ε_LB = largest ε rejected at level ``1 − confidence``.

  Raises:
    ConfigError: if the guesses exceed the canaries or none are made.

  **Formal guarantees:** if training is (ε, δ)-DP with respect to adding/removing one canary
  and each canary's inclusion is an independent fair coin, ``P[ε_LB > ε] <= 1 − confidence``.
  Not covered: canaries whose inclusion was not randomised, or scores computed with knowledge
  of the inclusion coins.
  """
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  included = np.asarray(included).reshape(-1).astype(bool)
  m = len(scores)
  validation.non_negative_int("num_positive_guesses", num_positive_guesses)
  validation.non_negative_int("num_negative_guesses", num_negative_guesses)
  r = num_positive_guesses + num_negative_guesses
  if r == 0 or r > m:
    raise validation.ConfigError(f"guesses k+ + k- = {r} must be in [1, {m}] (the canaries)")
  validation.in_range("confidence", confidence, 0.0, 1.0)
  order = np.argsort(-scores, kind="mergesort")
  correct = int(included[order[:num_positive_guesses]].sum())
  if num_negative_guesses:
    correct += int((~included[order[m - num_negative_guesses :]]).sum())
  p = 1.0 - confidence
  if one_run_p_value(m, r, correct, 0.0, delta) >= p:
    eps = 0.0
  else:
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, correct, hi, delta) < p and hi < 100:
      lo, hi = hi, hi * 2
    for _ in range(40):
      mid = (lo + hi) / 2
      if one_run_p_value(m, r, correct, mid, delta) < p:
        lo = mid
      else:
        hi = mid
    eps = lo
  return AuditResult(
    epsilon_lower_bound=float(eps),
    threshold=float("nan"),
    num_guesses=r,
    num_correct=correct,
    confidence=confidence,
  )


__all__ = [
  "AuditResult",
  "clopper_pearson",
  "epsilon_at_thresholds",
  "one_run_audit",
  "one_run_p_value",
  "threshold_audit",
]
