"""Clipped aggregators: what a DP path releases, for which unit of privacy, with what sensitivity.

Every DP path of trustml (central DP-SGD / eDP-SGD, user-level DP-FedAvg) releases noised
versions of two kinds of sums, and each is described here once:

* the **clipped sum** ``Σ_i s_i c_i g_i`` of per-unit vectors (an example's gradient, a user's
  model delta), clipped to L2 norm C and optionally scaled by ``s_i ∈ [0, 1]`` (DP-FedAvg's
  capped weights). Its L2 sensitivity is **C** under add/remove-one and **2C** under
  replace-one (one vector of norm ≤ C replaced by another of norm ≤ C);
* the **clipped count** of adaptive clipping, ``Σ_i (b_i − ½)`` with ``b_i = 1[||g_i|| ≤ C]``.
  Centred, its sensitivity is **½** under add/remove-one and **1** under replace-one; uncentred
  (``Σ_i b_i``) it is 1 under both.

The neighbouring relation follows from the sampling: Poisson sampling (each unit joins
independently) is accounted under add/remove-one; fixed-size batches or cohorts (a uniformly
random subset of exactly ``B`` of ``N``) under replace-one, as dp_accounting's
``SampledWithoutReplacementDpEvent`` requires.

The ledger (:mod:`trustml.privacy.ledger`) receives, per step, the noise standard deviations
actually applied and these sensitivities, and accounts the step as one Gaussian query of the
stacked (sum, count) vector with noise multiplier
``z = ((Δ_sum / std_sum)² + (Δ_count / std_count)²)^(-½)`` (:func:`effective_noise_multiplier`).
"""

import dataclasses
import math

import dp_accounting

from trustml.core import validation
from trustml.privacy import clipping as clipping_lib

UNITS = ("example", "user")
RELATIONS = ("add_or_remove_one", "replace_one")
SAMPLING_RELATION = {
  "poisson": "add_or_remove_one",
  "shuffle": "replace_one",
  "fixed": "replace_one",
  "uniform": "replace_one",
}


def relation_for_sampling(sampling: str) -> str:
  """The neighbouring relation under which a sampling scheme is accounted.

  Args:
    sampling: ``poisson`` (add/remove-one) or ``shuffle`` / ``fixed`` / ``uniform``
      (fixed-size subsets: replace-one).

  Returns:
    ``"add_or_remove_one"`` or ``"replace_one"``.
  """
  validation.one_of("privacy.sampling", sampling, tuple(SAMPLING_RELATION))
  return SAMPLING_RELATION[sampling]


def dp_relation(relation: str) -> dp_accounting.NeighboringRelation:
  """The dp_accounting ``NeighboringRelation`` of a relation name."""
  validation.one_of("neighboring_relation", relation, RELATIONS)
  if relation == "add_or_remove_one":
    return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
  return dp_accounting.NeighboringRelation.REPLACE_ONE


@dataclasses.dataclass(frozen=True)
class ClippedAggregator:
  """The clipped sum (and count) a DP path releases, with its declared sensitivity.

  Attributes:
    unit: the unit of privacy, ``"example"`` or ``"user"``.
    relation: ``"add_or_remove_one"`` or ``"replace_one"``.
    clipping: ``"flat"`` or ``"per_layer"`` (equal split C/√L; same total bound C).
    centred_count: the adaptive-clipping count is released centred (``Σ(b_i − ½)``).

  Formal guarantees:
    :meth:`sum` returns ``Σ_i s_i c_i g_i`` with ``||c_i g_i|| ≤ C`` and ``s_i ∈ [0, 1]``:
    replacing (or adding/removing) one unit's rows changes it by at most
    :meth:`sensitivity` in L2. :meth:`count` changes by at most :meth:`count_sensitivity`.
    Nothing is bounded for a unit that contributes several rows (the caller must give each
    unit one row: one example per row centrally, one delta per user in DP-FedAvg).
  """

  unit: str
  relation: str
  clipping: str = "flat"
  centred_count: bool = True

  def __post_init__(self):
    validation.one_of("privacy.unit", self.unit, UNITS)
    validation.one_of("neighboring_relation", self.relation, RELATIONS)
    validation.one_of("privacy.clipping", self.clipping, clipping_lib.CLIPPINGS)

  @property
  def sensitivity_factor(self) -> float:
    """Δ_sum / C: 1 under add/remove-one, 2 under replace-one."""
    return 1.0 if self.relation == "add_or_remove_one" else 2.0

  def sensitivity(self, l2_clip_norm: float) -> float:
    """L2 sensitivity of :meth:`sum` at clip norm C (C or 2C)."""
    return self.sensitivity_factor * l2_clip_norm

  def count_sensitivity(self) -> float:
    """Sensitivity of :meth:`count`: ½ centred under add/remove-one, else 1."""
    if self.centred_count and self.relation == "add_or_remove_one":
      return 0.5
    return 1.0

  def dp_relation(self) -> dp_accounting.NeighboringRelation:
    """The dp_accounting relation to account under."""
    return dp_relation(self.relation)

  def sum(self, rows, l2_clip_norm, weight, *, scale=None):
    """Clips materialised rows (``[B, ...]`` pytree) and sums them (see ``clipping.clipped_sum``).

    Returns:
      ``(sum_of_clipped_rows, stats)``.
    """
    return clipping_lib.clipped_sum(rows, l2_clip_norm, weight, self.clipping, scale=scale)

  def count(self, stats):
    """The adaptive-clipping count from clipping stats (``num_unclipped`` over valid rows).

    Returns:
      ``Σ_i (b_i − ½)`` over valid rows if centred, else ``Σ_i b_i`` (a scalar).
    """
    valid = stats["num_examples"] - stats["num_nonfinite"]
    if self.centred_count:
      return stats["num_unclipped"] - 0.5 * valid
    return stats["num_unclipped"]

  def count_offset(self) -> float:
    """What to add back to ``count / normaliser`` to estimate the unclipped fraction."""
    return 0.5 if self.centred_count else 0.0

  def describe(self) -> dict[str, object]:
    """The ``privacy/...`` facts of this aggregator for ``summary.json``."""
    return {
      "privacy/unit": self.unit,
      "privacy/neighboring_relation": self.relation,
      "privacy/sensitivity_per_clip_norm": self.sensitivity_factor,
      "privacy/count_sensitivity": self.count_sensitivity(),
    }


def effective_noise_multiplier(
  sum_std: float, sum_sensitivity: float, count_std: float = 0.0, count_sensitivity: float = 0.0
) -> float:
  """Noise multiplier of the stacked Gaussian query (clipped sum, optional clipped count).

  Two Gaussian queries on the same sample are one Gaussian query of the stacked vector whose
  noise multiplier ``z`` satisfies ``z⁻² = (Δ_s/std_s)² + (Δ_c/std_c)²`` (Andrew et al. 2021,
  §3; Mironov 2017, RDP of the Gaussian mechanism).

  Args:
    sum_std: std of the noise added to the clipped sum (0 = no noise).
    sum_sensitivity: its L2 sensitivity Δ_s > 0.
    count_std: std of the noise on the count (0 = no count query released).
    count_sensitivity: its sensitivity Δ_c (ignored when ``count_std`` is 0).

  Returns:
    ``z`` (0 when the sum is released without noise).
  """
  validation.non_negative("sum_std", sum_std)
  validation.positive("sum_sensitivity", sum_sensitivity)
  validation.non_negative("count_std", count_std)
  if sum_std == 0:
    return 0.0
  inv = (sum_sensitivity / sum_std) ** 2
  if count_std > 0:
    inv += (count_sensitivity / count_std) ** 2
  return 1.0 / math.sqrt(inv)


__all__ = [
  "RELATIONS",
  "SAMPLING_RELATION",
  "UNITS",
  "ClippedAggregator",
  "dp_relation",
  "effective_noise_multiplier",
  "relation_for_sampling",
]
