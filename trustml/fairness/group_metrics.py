"""Extrinsic group-fairness metrics: bias AUCs, parity gaps, per-group accuracy, bootstrap CIs.

Bias AUCs follow Borkan et al. (2019), "Nuanced Metrics for Measuring Unintended Bias with
Real Data for Text Classification" (arXiv:1903.04561). For an identity subgroup ``g``, with
``D`` the evaluated posts, ``g`` the posts mentioning/targeting the group and ``bg = D \\ g`` its
background:

* Subgroup AUC: AUC on ``g`` only.
* BPSN AUC (background positive, subgroup negative): AUC on ``{bg, y=1} ∪ {g, y=0}``.
* BNSP AUC (background negative, subgroup positive): AUC on ``{bg, y=0} ∪ {g, y=1}``.

Per-group AUCs are combined with the generalized (power) mean with ``p = -5``:
``M_p = (1/N Σ_g m_g^p)^(1/p)``, which weights the worst groups most.

HateXplain protocol (Mathew et al., AAAI 2021; their ``Bias_Calculation_NB.ipynb``): toxic =
hate speech ∪ offensive; a post's target communities are those chosen by at least 2 of its 3
annotators; the 10 most frequent such communities (``None`` and ``Other`` excluded) are the
subgroups; posts with none of those majority targets are left out of both subgroup and
background.

All statistics here call well-kept libraries: ``sklearn.metrics.roc_auc_score`` (the one AUROC
of the project, argument order ``(labels, scores)``), ``scipy.stats.pmean`` (generalized mean),
``scipy.stats.bootstrap`` (percentile CIs) and fairlearn's ``MetricFrame`` /
``demographic_parity_difference`` / ``equalized_odds_difference`` for per-group tables; group
inputs are fairlearn-style ``sensitive_features`` (any hashable labels per row). Scores come
from JAX models elsewhere; a NaN/inf score or a length mismatch raises a ``ConfigError`` naming
the input.
"""

import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import fairlearn.metrics
import numpy as np
from scipy import stats
from sklearn import metrics

from trustml.core import rng as rng_lib
from trustml.core import validation

HATEXPLAIN_LABELS = ("hatespeech", "normal", "offensive")  # 0, 1, 2 in the HF schema.
HATEXPLAIN_NORMAL = 1
EXCLUDED_TARGETS = ("None", "Other")
METHODS = ("subgroup", "bpsn", "bnsp")


def _auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
  """``sklearn.metrics.roc_auc_score``, NaN when only one class is present."""
  if len(np.unique(labels)) < 2:
    return float("nan")
  return float(metrics.roc_auc_score(labels, scores))


def bias_auc_subsets(
  labels: np.ndarray, in_group: np.ndarray, valid: np.ndarray | None = None
) -> dict[str, np.ndarray]:
  """Boolean masks of the examples each bias AUC of one subgroup is computed on.

  Args:
    labels: ``[N]`` binary labels (1 = toxic).
    in_group: ``[N]`` bool, membership of the subgroup.
    valid: ``[N]`` bool, examples in the evaluated universe (HateXplain: posts with a
      majority top-10 target); ``None`` = all.

  Returns:
    dict ``subgroup``, ``bpsn``, ``bnsp`` -> ``[N]`` bool masks.
  """
  y = np.asarray(labels).astype(bool)
  g = np.asarray(in_group).astype(bool)
  v = np.ones_like(g) if valid is None else np.asarray(valid).astype(bool)
  g = g & v
  bg = v & ~g
  return {
    "subgroup": g,
    "bpsn": (bg & y) | (g & ~y),
    "bnsp": (bg & ~y) | (g & y),
  }


def _check_groups(labels, in_groups, valid, group_names, scores=None):
  y = np.asarray(labels)
  if scores is not None:
    validation.finite_array("scores", scores, ndim=1)
    validation.same_length(labels=y, scores=scores)
  if valid is not None:
    validation.same_length(labels=y, valid=valid)
  m = np.asarray(in_groups).astype(bool)
  if m.ndim != 2 or m.shape[0] != y.shape[0]:
    raise validation.ConfigError(
      f"in_groups shape {m.shape} is invalid: must be [N={y.shape[0]}, G]"
    )
  if not np.isin(y, (0, 1)).all():
    raise validation.ConfigError("labels are invalid: must be binary 0/1")
  names = (
    list(group_names) if group_names is not None else [f"group_{i}" for i in range(m.shape[1])]
  )
  if len(names) != m.shape[1]:
    raise validation.ConfigError(f"group_names has {len(names)} names for {m.shape[1]} groups")
  v = np.ones(y.shape[0], bool) if valid is None else np.asarray(valid).astype(bool)
  for j, name in enumerate(names):
    g = m[:, j] & v
    if not g.any():
      raise validation.ConfigError(
        f"subgroup {name!r} is empty: no evaluated example belongs to it"
      )
    for method, mask in bias_auc_subsets(y, m[:, j], v).items():
      if len(np.unique(y[mask])) < 2:
        raise validation.ConfigError(
          f"subgroup {name!r} is invalid for {method} AUC: its subset has only one class"
        )
  return y, m, v, names


def bias_aucs(
  labels: np.ndarray,
  scores: np.ndarray,
  in_groups: np.ndarray,
  valid: np.ndarray | None = None,
  group_names: Sequence[str] | None = None,
  *,
  check: bool = True,
) -> dict[str, np.ndarray]:
  """Subgroup, BPSN and BNSP AUCs for each subgroup.

  Args:
    labels: ``[N]`` binary labels (1 = toxic).
    scores: ``[N]`` toxicity scores.
    in_groups: ``[N, G]`` bool membership.
    valid: ``[N]`` bool evaluated universe (see :func:`bias_auc_subsets`).
    group_names: ``G`` names used in error messages.
    check: validate (empty subgroups, one-class subsets) before computing.

  Returns:
    dict ``subgroup``/``bpsn``/``bnsp`` -> float64 ``[G]`` (NaN where a subset has one class,
    only possible with ``check=False``).

  Raises:
    ConfigError: on an empty subgroup, a subset with a single class, a non-finite score or
      a length mismatch (when ``check``).
  """
  if check:
    _check_groups(labels, in_groups, valid, group_names, scores)
  y = np.asarray(labels)
  s = np.asarray(scores, dtype=np.float64)
  m = np.asarray(in_groups).astype(bool)
  out = {k: np.empty(m.shape[1]) for k in METHODS}
  for j in range(m.shape[1]):
    for method, mask in bias_auc_subsets(y, m[:, j], valid).items():
      out[method][j] = _auc_or_nan(y[mask], s[mask])
  return out


def overall_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """``sklearn.metrics.roc_auc_score(labels, scores)`` after checking the inputs.

  Raises:
    ConfigError: on non-finite scores, a length mismatch or a single class.
  """
  s = validation.finite_array("scores", scores, ndim=1)
  validation.same_length(labels=labels, scores=s)
  if len(np.unique(labels)) < 2:
    raise validation.ConfigError("labels are invalid: both classes must occur")
  return float(metrics.roc_auc_score(labels, s))


def _sensitive(sensitive_features, n: int) -> np.ndarray:
  """Fairlearn-style sensitive features as a 1-D object array; rows to ignore are ``None``.

  Integer ids ``< 0`` (the project's "no single group" code) are mapped to ``None``.
  """
  sf = np.asarray(sensitive_features)
  if sf.ndim != 1 or sf.shape[0] != n:
    raise validation.ConfigError(
      f"sensitive_features with shape {sf.shape} is invalid: must be [{n}] (one per row)"
    )
  out = sf.astype(object)
  if np.issubdtype(sf.dtype, np.integer):
    out[sf < 0] = None
  return out


def _binary(name: str, x) -> np.ndarray:
  x = np.asarray(x)
  if not np.isin(x, (0, 1)).all():
    raise validation.ConfigError(f"{name} is invalid: must be binary 0/1")
  return x.astype(int)


def _rows_with_groups(sensitive_features, n: int):
  sf = _sensitive(sensitive_features, n)
  keep = np.array([v is not None for v in sf])
  if len(set(sf[keep].tolist())) < 2:
    raise validation.ConfigError(
      "sensitive_features is invalid: need at least two groups (integer ids < 0 are ignored)"
    )
  return keep, sf


def demographic_parity_difference(predictions: np.ndarray, sensitive_features) -> float:
  """Largest minus smallest per-group selection rate (fairlearn's definition and code).

  Args:
    predictions: ``[N]`` binary predictions.
    sensitive_features: ``[N]`` group of each row (any labels; integer ids < 0 are ignored).

  Raises:
    ConfigError: if predictions are not binary, lengths differ or fewer than two groups occur.
  """
  yhat = _binary("predictions", predictions)
  keep, sf = _rows_with_groups(sensitive_features, len(yhat))
  return float(
    fairlearn.metrics.demographic_parity_difference(
      yhat[keep], yhat[keep], sensitive_features=sf[keep].tolist()
    )
  )


def equalized_odds_difference(
  labels: np.ndarray, predictions: np.ndarray, sensitive_features
) -> float:
  """``max(TPR gap, FPR gap)`` across groups (fairlearn's definition and code).

  Raises:
    ConfigError: if inputs are not binary, lengths differ, fewer than two groups occur or a
      group lacks a class.
  """
  y = _binary("labels", labels)
  yhat = _binary("predictions", predictions)
  validation.same_length(labels=y, predictions=yhat)
  keep, sf = _rows_with_groups(sensitive_features, len(y))
  for g in set(sf[keep].tolist()):
    in_g = keep & (sf == g)
    if len(np.unique(y[in_g])) < 2:
      raise validation.ConfigError(f"group {g!r} has examples of one label only")
  return float(
    fairlearn.metrics.equalized_odds_difference(
      y[keep], yhat[keep], sensitive_features=sf[keep].tolist()
    )
  )


def per_group_table(
  labels: np.ndarray,
  predictions: np.ndarray,
  sensitive_features,
  metric_fns: Mapping[str, Callable[[np.ndarray, np.ndarray], float]] | None = None,
) -> fairlearn.metrics.MetricFrame:
  """A fairlearn ``MetricFrame`` of per-group metrics (default: accuracy and count).

  Args:
    labels: ``[N]`` true labels.
    predictions: ``[N]`` predicted labels.
    sensitive_features: ``[N]`` group of each row (integer ids < 0 are left out).
    metric_fns: name -> ``fn(y_true, y_pred)``.

  Returns:
    The ``MetricFrame`` (``.by_group``, ``.difference()``, ...).

  Raises:
    ConfigError: on a length mismatch.
  """
  validation.same_length(labels=labels, predictions=predictions)
  sf = _sensitive(sensitive_features, len(np.asarray(labels)))
  keep = np.array([v is not None for v in sf])
  fns = metric_fns or {"accuracy": metrics.accuracy_score, "count": fairlearn.metrics.count}
  return fairlearn.metrics.MetricFrame(
    metrics=dict(fns),
    y_true=np.asarray(labels)[keep],
    y_pred=np.asarray(predictions)[keep],
    sensitive_features=sf[keep].tolist(),
  )


def per_group_accuracy(
  labels: np.ndarray, predictions: np.ndarray, sensitive_features
) -> dict[object, float]:
  """Accuracy of each group (fairlearn ``MetricFrame``; integer ids < 0 ignored)."""
  frame = per_group_table(labels, predictions, sensitive_features)
  return {g: float(v) for g, v in frame.by_group["accuracy"].items()}


def bootstrap_ci(
  statistic_fn: Callable[..., float | np.ndarray],
  arrays: Sequence[np.ndarray],
  *,
  num_samples: int = 1000,
  confidence: float = 0.95,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Percentile bootstrap CI by ``scipy.stats.bootstrap``, rows of ``arrays`` resampled together.

  Args:
    statistic_fn: ``statistic_fn(*resampled_arrays) -> float or array``; it may return NaN
      (e.g. a one-class resample): such resamples are left out of the percentiles.
    arrays: equal-length arrays (any trailing shape) resampled together by row.
    num_samples: bootstrap resamples.
    confidence: two-sided level in (0, 1).
    seed: root seed; the stream ``"bootstrap"`` is used.

  Returns:
    ``(low, high)`` arrays shaped like the statistic.

  Raises:
    ConfigError: on invalid ``num_samples``/``confidence`` or unequal lengths.
  """
  validation.positive_int("num_samples", num_samples)
  validation.in_range("confidence", confidence, 0.0, 1.0)
  validation.same_length(**{f"arrays[{i}]": a for i, a in enumerate(arrays)})
  arrays = [np.asarray(a) for a in arrays]

  def on_rows(idx):
    return np.asarray(statistic_fn(*(a[idx] for a in arrays)), np.float64)

  with warnings.catch_warnings():  # NaN resamples are handled below; scipy warns about them
    warnings.simplefilter("ignore", stats.DegenerateDataWarning)
    res = stats.bootstrap(
      (np.arange(len(arrays[0])),),
      on_rows,
      vectorized=False,
      n_resamples=num_samples,
      confidence_level=confidence,
      method="percentile",
      rng=rng_lib.numpy_rng(seed, "bootstrap"),
    )
  low, high = res.confidence_interval
  draws = np.moveaxis(np.asarray(res.bootstrap_distribution), -1, 0)
  if np.isnan(draws).any():  # scipy's percentiles propagate NaN: leave undefined resamples out
    alpha = (1.0 - confidence) / 2
    low = np.nanquantile(draws, alpha, axis=0)
    high = np.nanquantile(draws, 1.0 - alpha, axis=0)
  return np.asarray(low), np.asarray(high)


def gmb(values: Sequence[float] | np.ndarray, p: float = -5.0) -> float:
  """Borkan et al.'s generalized mean of per-group AUCs: ``scipy.stats.pmean(values, p)``.

  Raises:
    ConfigError: if ``values`` is empty or not finite, or has negative entries (or a zero
      entry with ``p == 0``).
  """
  v = validation.finite_array("values", values, ndim=1)
  if v.size == 0:
    raise validation.ConfigError("values is invalid: must be non-empty")
  if (v < 0).any() or (p == 0 and (v == 0).any()):
    raise validation.ConfigError(f"values are invalid: must be > 0 for p={p}")
  with np.errstate(divide="ignore"):
    return float(stats.pmean(v, p))


def bias_auc_report(
  labels: np.ndarray,
  scores: np.ndarray,
  member: np.ndarray,
  valid: np.ndarray,
  communities: Sequence[str],
  *,
  threshold: float,
  bootstrap_samples: int,
  seed: int,
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
  """The HateXplain bias-AUC summary of one classifier's toxicity scores.

  Per-community subgroup/BPSN/BNSP AUCs and their means, the ``p = -5`` generalized means with
  95% percentile-bootstrap CIs (posts resampled), the overall AUC, and the demographic-parity
  and equalized-odds differences of ``score >= threshold`` over posts with exactly one of the
  communities (communities with a single label among those posts are left out of the gaps).

  Args:
    labels: ``[N]`` binary toxic labels.
    scores: ``[N]`` toxicity scores.
    member: ``[N, G]`` community membership.
    valid: ``[N]`` posts with a majority target among the communities.
    communities: the ``G`` names.
    threshold: decision threshold of the parity gaps.
    bootstrap_samples: resamples of the CIs.
    seed: bootstrap seed.

  Returns:
    ``(summary, per_group)``: ``bias_auc/...`` keys, and the per-community AUC arrays.

  Raises:
    ConfigError: on bad scores, an empty community or a one-class subset.
  """
  per = bias_aucs(labels, scores, member, valid, communities)
  summary: dict[str, object] = {}
  for m in METHODS:
    summary[f"bias_auc/{m}"] = float(np.mean(per[m]))
    for c, v in zip(communities, per[m], strict=True):
      summary[f"bias_auc/{m}/{c}"] = float(v)
  summary.update(summarize_bias_aucs(per))

  def gmbs(y, s, mem, val):
    out = bias_aucs(y, s, mem, val, check=False)
    if any(np.isnan(out[m]).any() for m in METHODS):
      return np.full(3, np.nan)
    return np.array([gmb(out[m]) for m in METHODS])

  lo, hi = bootstrap_ci(
    gmbs, [labels, scores, member, valid], num_samples=bootstrap_samples, seed=seed
  )
  for i, m in enumerate(METHODS):
    summary[f"bias_auc/gmb_{m}_ci_low"] = float(lo[i])
    summary[f"bias_auc/gmb_{m}_ci_high"] = float(hi[i])
  pred = (scores >= threshold).astype(int)
  single = np.where(member.sum(1) == 1, member.argmax(1), -1)
  for g in np.unique(single[single >= 0]):  # Parity gaps: groups with both classes only.
    if len(np.unique(labels[single == g])) < 2:
      single[single == g] = -1
  summary["bias_auc/overall_auc"] = overall_auc(labels, scores)
  summary["bias_auc/dp_difference"] = demographic_parity_difference(pred, single)
  summary["bias_auc/eo_difference"] = equalized_odds_difference(labels, pred, single)
  summary["bias_auc/accuracy"] = float((pred == labels).mean())
  summary["bias_auc/communities"] = ",".join(communities)
  return summary, per


# --- HateXplain protocol ------------------------------------------------------------------


def majority_targets(annotator_targets: Sequence[Sequence[Sequence[str]]]) -> list[tuple[str, ...]]:
  """Target communities chosen by at least 2 annotators of each post (``None`` kept as a name).

  Args:
    annotator_targets: per post, per annotator, the list of communities.

  Returns:
    Per post, the sorted tuple of majority communities (possibly empty).
  """
  out = []
  for per_annotator in annotator_targets:
    counts = Counter(t for targets in per_annotator for t in set(targets))
    out.append(tuple(sorted(t for t, c in counts.items() if c >= 2)))
  return out


def top_communities(
  targets: Sequence[Sequence[str]], k: int = 10, exclude: Sequence[str] = EXCLUDED_TARGETS
) -> list[str]:
  """The ``k`` most frequent majority communities (ties broken by name), excluding ``exclude``."""
  validation.positive_int("k", k)
  counts = Counter(t for post in targets for t in post if t not in exclude)
  return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def membership(targets: Sequence[Sequence[str]], communities: Sequence[str]) -> np.ndarray:
  """``[N, G]`` bool: does post ``n`` have community ``g`` among its targets."""
  return np.array([[c in set(t) for c in communities] for t in targets], dtype=bool).reshape(
    len(targets), len(communities)
  )


def toxic_from_annotations(annotator_labels: Sequence[Sequence[int]]) -> np.ndarray:
  """Binary toxic labels from 3 annotator labels (majority of {hate ∪ offensive} vs normal).

  A post is toxic when at least 2 of its annotators chose hate speech or offensive, which is
  the HateXplain two-class reduction of the majority label.
  """
  labels = [np.asarray(lbl) for lbl in annotator_labels]
  return np.array([int((lbl != HATEXPLAIN_NORMAL).sum() * 2 > lbl.size) for lbl in labels])


def summarize_bias_aucs(per_group: Mapping[str, np.ndarray], p: float = -5.0) -> dict[str, float]:
  """Generalized means of per-group bias AUCs, keyed ``bias_auc/gmb_<method>``."""
  return {f"bias_auc/gmb_{m}": gmb(per_group[m], p) for m in METHODS}


__all__ = [
  "EXCLUDED_TARGETS",
  "METHODS",
  "bias_auc_report",
  "bias_auc_subsets",
  "bias_aucs",
  "bootstrap_ci",
  "demographic_parity_difference",
  "equalized_odds_difference",
  "gmb",
  "majority_targets",
  "membership",
  "overall_auc",
  "per_group_accuracy",
  "per_group_table",
  "summarize_bias_aucs",
  "top_communities",
  "toxic_from_annotations",
]
