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

All statistics here are NumPy/SciPy; scores come from JAX models elsewhere.
"""

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from trustml.core import rng as rng_lib
from trustml.core import validation

HATEXPLAIN_LABELS = ("hatespeech", "normal", "offensive")  # 0, 1, 2 in the HF schema.
HATEXPLAIN_NORMAL = 1
EXCLUDED_TARGETS = ("None", "Other")
METHODS = ("subgroup", "bpsn", "bnsp")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve (Mann–Whitney U with mid-ranks for ties).

  Args:
    labels: ``[N]`` binary {0, 1}.
    scores: ``[N]`` real scores, higher = more positive.

  Returns:
    The AUC, or NaN if only one class is present.
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, dtype=np.float64)
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = stats.rankdata(scores)
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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


def _check_groups(labels, in_groups, valid, group_names):
  y = np.asarray(labels)
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
    ConfigError: on an empty subgroup or a subset with a single class (when ``check``).
  """
  if check:
    _check_groups(labels, in_groups, valid, group_names)
  y = np.asarray(labels)
  s = np.asarray(scores, dtype=np.float64)
  m = np.asarray(in_groups).astype(bool)
  out = {k: np.empty(m.shape[1]) for k in METHODS}
  for j in range(m.shape[1]):
    for method, mask in bias_auc_subsets(y, m[:, j], valid).items():
      out[method][j] = roc_auc(y[mask], s[mask])
  return out


def generalized_mean(values: Sequence[float] | np.ndarray, p: float = -5.0) -> float:
  """Power mean ``(1/N Σ v^p)^(1/p)`` (geometric mean for ``p == 0``).

  Args:
    values: positive numbers (e.g. per-group AUCs).
    p: the power; Borkan et al. use ``-5``.

  Returns:
    The generalized mean.

    For ``p < 0`` a zero entry gives 0 (the limit of the power mean as that entry -> 0).

  Raises:
    ConfigError: if ``values`` is empty, or has negative entries with ``p <= 0`` (or a zero
      entry with ``p == 0``).

  Example:
    >>> round(generalized_mean([0.5, 1.0], p=-1), 4)  # harmonic mean
    0.6667
  """
  v = np.asarray(values, dtype=np.float64)
  if v.size == 0:
    raise validation.ConfigError("values is invalid: must be non-empty")
  if p <= 0 and ((v < 0).any() or (p == 0 and (v == 0).any())):
    raise validation.ConfigError(f"values are invalid: must be > 0 for p={p}")
  if p < 0 and (v == 0).any():
    return 0.0
  if p == 0:
    return float(np.exp(np.log(v).mean()))
  return float(np.mean(v**p) ** (1.0 / p))


def _group_rates(values: np.ndarray, group_ids: np.ndarray, where: np.ndarray | None = None):
  rates = {}
  for g in np.unique(group_ids):
    mask = group_ids == g
    if where is not None:
      mask = mask & where
    if mask.any():
      rates[int(g)] = float(values[mask].mean())
  return rates


def _check_binary(name: str, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if not np.isin(x, (0, 1)).all():
    raise validation.ConfigError(f"{name} is invalid: must be binary 0/1")
  return x.astype(np.float64)


def _valid_group_ids(group_ids: np.ndarray) -> np.ndarray:
  ids = np.asarray(group_ids)
  if len(np.unique(ids[ids >= 0])) < 2:
    raise validation.ConfigError("group_ids is invalid: need at least two groups (ids >= 0)")
  return ids


def demographic_parity_difference(predictions: np.ndarray, group_ids: np.ndarray) -> float:
  """Largest minus smallest per-group positive-prediction rate (ids < 0 are ignored).

  Raises:
    ConfigError: if predictions are not binary or fewer than two groups are present.
  """
  ids = _valid_group_ids(group_ids)
  rates = _group_rates(_check_binary("predictions", predictions), ids, ids >= 0)
  return max(rates.values()) - min(rates.values())


def equalized_odds_difference(
  labels: np.ndarray, predictions: np.ndarray, group_ids: np.ndarray
) -> float:
  """``max(TPR gap, FPR gap)`` across groups (the Fairlearn definition; ids < 0 ignored).

  Raises:
    ConfigError: if inputs are not binary, fewer than two groups, or a group lacks a class.
  """
  ids = _valid_group_ids(group_ids)
  y = _check_binary("labels", labels)
  yhat = _check_binary("predictions", predictions)
  gaps = []
  for cls in (1.0, 0.0):
    rates = _group_rates(yhat, ids, (ids >= 0) & (y == cls))
    if len(rates) < len(np.unique(ids[ids >= 0])):
      raise validation.ConfigError(f"a group has no examples with label {int(cls)}")
    gaps.append(max(rates.values()) - min(rates.values()))
  return float(max(gaps))


def per_group_accuracy(
  labels: np.ndarray, predictions: np.ndarray, group_ids: np.ndarray
) -> dict[int, float]:
  """Accuracy of each group id (ids < 0 ignored)."""
  ids = np.asarray(group_ids)
  correct = (np.asarray(labels) == np.asarray(predictions)).astype(np.float64)
  return _group_rates(correct, ids, ids >= 0)


def bootstrap_ci(
  statistic_fn: Callable[..., float | np.ndarray],
  arrays: Sequence[np.ndarray],
  *,
  num_samples: int = 1000,
  confidence: float = 0.95,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Percentile bootstrap confidence interval of a statistic over resampled examples.

  Args:
    statistic_fn: ``statistic_fn(*resampled_arrays) -> float or array``; may return NaN (e.g.
      a one-class resample), such resamples are ignored.
    arrays: equal-length arrays resampled together (rows with replacement).
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
  n = len(arrays[0])
  if any(len(a) != n for a in arrays):
    raise validation.ConfigError("arrays are invalid: must all have the same length")
  generator = rng_lib.numpy_rng(seed, "bootstrap")
  draws = []
  for _ in range(num_samples):
    idx = generator.integers(0, n, size=n)
    draws.append(np.asarray(statistic_fn(*(np.asarray(a)[idx] for a in arrays)), np.float64))
  draws = np.stack(draws)
  alpha = (1.0 - confidence) / 2
  low = np.nanquantile(draws, alpha, axis=0)
  high = np.nanquantile(draws, 1.0 - alpha, axis=0)
  return low, high


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
  return {f"bias_auc/gmb_{m}": generalized_mean(per_group[m], p) for m in METHODS}


__all__ = [
  "EXCLUDED_TARGETS",
  "METHODS",
  "bias_auc_subsets",
  "bias_aucs",
  "bootstrap_ci",
  "demographic_parity_difference",
  "equalized_odds_difference",
  "generalized_mean",
  "majority_targets",
  "membership",
  "per_group_accuracy",
  "roc_auc",
  "summarize_bias_aucs",
  "top_communities",
  "toxic_from_annotations",
]
