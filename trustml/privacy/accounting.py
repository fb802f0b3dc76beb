"""Privacy accounting with ``dp_accounting``: DpEvents of what ran, ε for δ, calibration.

Nothing here hand-rolls an accountant: every figure comes from ``dp_accounting``'s
``RdpAccountant`` or ``pld.PLDAccountant`` applied to a ``DpEvent`` that describes what ran.

Noise multipliers here are **accounted** multipliers ``z = noise std / L2 sensitivity`` of the
released query, dp_accounting's convention. Under add/remove-one (Poisson sampling) the clipped
sum has sensitivity C, so ``z = σ`` (noise std σC); under replace-one (fixed-size batches or
cohorts) it has sensitivity 2C, so ``z = σ/2`` (:mod:`trustml.privacy.aggregators`; jax_privacy
halves the multiplier for fixed batches the same way).

Events by sampling scheme (see :func:`step_event`):

* ``poisson``: each unit joins a step independently with probability ``q``:
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under add/remove-one neighbouring.
* ``shuffle`` / ``fixed``: each step draws a fresh uniformly random subset of exactly ``B`` of
  the ``N`` units: ``SampledWithoutReplacementDpEvent(N, B, GaussianDpEvent(z))`` under
  **replace-one** neighbouring. Only the RDP accountant supports this event in dp_accounting
  0.6; ``shuffle`` with ``pld`` is a ConfigError.

A run is the composition of what ran: consecutive steps with equal records form a
``SelfComposedDpEvent``; the run is the ``ComposedDpEvent`` of those segments.

RDP→(ε, δ) conversion: dp_accounting's ``RdpAccountant.get_epsilon`` uses the *improved*
conversion (Canonne, Kamath & Steinke 2020, Prop. 12 of arXiv:2004.00010 v4).
``conversion="classic"`` applies the classic one, ε = min_α RDP(α) + log(1/δ)/(α − 1)
(Mironov 2017, Prop. 3), to the same RDP curve computed by dp_accounting — this is the
conversion behind the TF Privacy tutorial's ε ≈ 3.01. Calibration uses the same conversion as
reporting.

Speed: the RDP curve of each distinct one-step event is computed once by dp_accounting's
``RdpAccountant`` and cached (:func:`step_rdp`); a run's curve is then Σ n_k · curve_k, the same
sum in the same order the accountant forms when it composes the run's event, so a ledger that
reports ε every few steps, or plans its budget stop over many step counts, pays for the curve
once per distinct step instead of once per query (bit-identical ε; see the tests).
"""

import functools
import math
from collections.abc import Sequence

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp
from dp_accounting.rdp import rdp_privacy_accountant

from trustml.core import validation
from trustml.privacy import aggregators

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "shuffle")
CONVERSIONS = ("improved", "classic")

# Orders of the RDP curve (dp_accounting's default set extended at the high end).
RDP_ORDERS = tuple(
  [1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)


FIXED_SAMPLINGS = ("shuffle", "fixed", "uniform")


def neighboring_relation(sampling: str) -> dp_accounting.NeighboringRelation:
  """The neighbouring relation under which a sampling scheme is accounted.

  Args:
    sampling: ``"poisson"`` (add/remove one unit) or ``"shuffle"`` / ``"fixed"`` /
      ``"uniform"`` (fixed-size subsets: replace one unit).

  Returns:
    The dp_accounting ``NeighboringRelation``.
  """
  return aggregators.dp_relation(aggregators.relation_for_sampling(sampling))


class _ClassicRdpAccountant(rdp.RdpAccountant):
  """dp_accounting's RDP accountant reporting ε with the classic conversion (Mironov 2017)."""

  def get_epsilon(self, target_delta: float) -> float:  # noqa: D102
    return classic_rdp_epsilon(self._orders, self._rdp, target_delta)


def make_accountant(
  accountant: str, sampling: str, conversion: str = "improved"
) -> dp_accounting.PrivacyAccountant:
  """A fresh dp_accounting accountant for ``sampling``.

  Args:
    accountant: ``"rdp"`` or ``"pld"``.
    sampling: ``"poisson"`` or a fixed-size scheme (``"shuffle"``, ``"fixed"``, ``"uniform"``).
    conversion: RDP→DP conversion (``"improved"`` or ``"classic"``; ignored by PLD).

  Returns:
    An empty ``RdpAccountant`` / ``PLDAccountant`` with the right neighbouring relation.

  Raises:
    ConfigError: on unknown names or a fixed-size scheme with ``pld`` (unsupported by
      dp_accounting).
  """
  validation.one_of("privacy.accountant", accountant, ACCOUNTANTS)
  validation.one_of("privacy.rdp_conversion", conversion, CONVERSIONS)
  relation = neighboring_relation(sampling)
  if accountant == "rdp":
    cls = _ClassicRdpAccountant if conversion == "classic" else rdp.RdpAccountant
    return cls(orders=RDP_ORDERS, neighboring_relation=relation)
  if sampling in FIXED_SAMPLINGS:
    raise validation.ConfigError(
      f"privacy.accountant='pld' is invalid with privacy.sampling={sampling!r}: dp_accounting's "
      "PLD accountant has no sampled-without-replacement event; use accountant='rdp'"
    )
  return pld.PLDAccountant(neighboring_relation=relation)


def validate_step_args(
  sampling: str, sampling_rate: float, noise_multiplier: float, dataset_size: int | None
) -> None:
  """Checks sampling and noise arguments (ConfigError naming the field)."""
  validation.one_of("privacy.sampling", sampling, SAMPLINGS + FIXED_SAMPLINGS[1:])
  validation.in_range("privacy.sampling_rate", sampling_rate, 0.0, 1.0, high_inclusive=True)
  validation.non_negative("privacy.noise_multiplier", noise_multiplier)
  if sampling in FIXED_SAMPLINGS:
    if dataset_size is None:
      raise validation.ConfigError("dataset_size=None is invalid: fixed-size accounting needs N")
    validation.positive_int("dataset_size", dataset_size)


def step_event(
  sampling: str,
  sampling_rate: float,
  noise_multiplier: float,
  *,
  dataset_size: int | None = None,
  batch_size: int | None = None,
) -> dp_accounting.DpEvent:
  """The DpEvent of ONE step (or round).

  Args:
    sampling: ``"poisson"`` or a fixed-size scheme (``"shuffle"``, ``"fixed"``, ``"uniform"``).
    sampling_rate: ``q`` (Poisson) or ``B / N`` (fixed size).
    noise_multiplier: the ACCOUNTED ``z`` = noise std / L2 sensitivity of the released query
      (σ under Poisson, σ/2 for a clipped sum under replace-one); 0 = non-private.
    dataset_size: ``N``; required for fixed-size schemes.
    batch_size: ``B`` for fixed-size schemes (default ``round(q N)``).

  Returns:
    ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` or
    ``SampledWithoutReplacementDpEvent(N, B, GaussianDpEvent(z))``; ``NonPrivateDpEvent`` for
    ``z = 0``.

  Raises:
    ConfigError: on invalid arguments.
  """
  validate_step_args(sampling, sampling_rate, noise_multiplier, dataset_size)
  if noise_multiplier == 0:
    return dp_accounting.NonPrivateDpEvent()
  gaussian = dp_accounting.GaussianDpEvent(float(noise_multiplier))
  if sampling == "poisson":
    return dp_accounting.PoissonSampledDpEvent(float(sampling_rate), gaussian)
  batch = int(batch_size) if batch_size else max(1, int(round(sampling_rate * dataset_size)))
  return dp_accounting.SampledWithoutReplacementDpEvent(int(dataset_size), batch, gaussian)


def run_event(
  segments: Sequence[tuple[float, int]],
  *,
  sampling: str,
  sampling_rate: float,
  dataset_size: int | None = None,
  batch_size: int | None = None,
) -> dp_accounting.DpEvent:
  """The DpEvent of a run with one sampling setup: its constant-z segments, in order.

  Args:
    segments: ``(accounted_noise_multiplier, num_steps)`` pairs for the steps that ran.
    sampling: ``"poisson"`` or a fixed-size scheme.
    sampling_rate: ``q`` per step.
    dataset_size: ``N`` (required for fixed-size schemes).
    batch_size: ``B`` (fixed-size schemes).

  Returns:
    ``ComposedDpEvent`` of ``SelfComposedDpEvent(step_event(σ_k), n_k)``; ``NoOpDpEvent`` if no
    step ran.
  """
  events = []
  for sigma, count in segments:
    validation.non_negative_int("num_steps", count)
    if count > 0:
      event = step_event(
        sampling, sampling_rate, sigma, dataset_size=dataset_size, batch_size=batch_size
      )
      events.append(dp_accounting.SelfComposedDpEvent(event, int(count)))
  if not events:
    return dp_accounting.NoOpDpEvent()
  if len(events) == 1:
    return events[0]
  return dp_accounting.ComposedDpEvent(events)


def classic_rdp_epsilon(
  orders: Sequence[float], rdp_values: Sequence[float], delta: float
) -> float:
  """The classic RDP→(ε, δ) conversion ε = min_α RDP(α) + log(1/δ)/(α − 1) (Mironov 2017).

  Args:
    orders: RDP orders α > 1.
    rdp_values: RDP ε(α) at those orders (from dp_accounting).
    delta: target δ in (0, 1).

  Returns:
    The smallest ε over orders.
  """
  orders = np.asarray(orders, dtype=np.float64)
  vals = np.asarray(rdp_values, dtype=np.float64)
  keep = orders > 1.0
  eps = vals[keep] + math.log(1.0 / delta) / (orders[keep] - 1.0)
  return float(max(0.0, np.min(eps)))


def epsilon(
  event: dp_accounting.DpEvent,
  delta: float,
  *,
  accountant: str = "rdp",
  sampling: str = "poisson",
  conversion: str = "improved",
) -> float:
  """ε at δ of ``event``.

  Args:
    event: the DpEvent of the run (e.g. from :func:`run_event`).
    delta: target δ in (0, 1).
    accountant: ``"rdp"`` or ``"pld"``.
    sampling: the sampling scheme (fixes the neighbouring relation).
    conversion: RDP→DP conversion, ``"improved"`` (dp_accounting's) or ``"classic"``; ignored
      by PLD.

  Returns:
    ε (``inf`` for a non-private event, e.g. σ = 0).

  Raises:
    ConfigError: on invalid δ, accountant or conversion.

  Formal guarantees:
    The returned ε bounds the (ε, δ)-DP of the mechanism described by ``event`` under the
    neighbouring relation of ``sampling`` (:func:`neighboring_relation`). It covers only what
    the event describes: the caller must pass the event of what actually ran.
  """
  validation.in_range("privacy.delta", delta, 0.0, 1.0)
  acc = make_accountant(accountant, sampling, conversion)
  segments = _flat_segments(event) if accountant == "rdp" else None
  if segments is None:  # PLD, or an event shape the cache does not flatten: compose it all.
    acc.compose(event)
    return float(acc.get_epsilon(delta))
  if not acc.supports(event):  # The accountant's own error for an unsupported event.
    acc.compose(event)
  relation = neighboring_relation(sampling)
  curve = np.zeros(len(RDP_ORDERS))
  for step, count in segments:
    if isinstance(step, dp_accounting.NonPrivateDpEvent):
      curve += np.inf  # As the accountant composes it (whatever the count).
    else:
      curve += count * step_rdp(step, relation)
  orders = np.asarray(RDP_ORDERS, dtype=np.float64)
  if conversion == "classic":
    return classic_rdp_epsilon(orders, curve, delta)
  return float(rdp_privacy_accountant.compute_epsilon(orders, curve, delta)[0])


_LEAVES = (
  dp_accounting.PoissonSampledDpEvent,
  dp_accounting.SampledWithoutReplacementDpEvent,
  dp_accounting.GaussianDpEvent,
  dp_accounting.NonPrivateDpEvent,
)


def _flat_segments(event: dp_accounting.DpEvent) -> list[tuple[dp_accounting.DpEvent, int]] | None:
  """``[(one-step event, count), ...]`` in composition order, or None for other shapes."""
  if isinstance(event, dp_accounting.NoOpDpEvent):
    return []
  if isinstance(event, _LEAVES):
    return [(event, 1)]
  if isinstance(event, dp_accounting.SelfComposedDpEvent):
    inner = _flat_segments(event.event)
    return None if inner is None else [(e, n * int(event.count)) for e, n in inner]
  if isinstance(event, dp_accounting.ComposedDpEvent):
    out = []
    for e in event.events:
      inner = _flat_segments(e)
      if inner is None:
        return None
      out += inner
    return out
  return None


@functools.lru_cache(maxsize=1024)
def step_rdp(
  event: dp_accounting.DpEvent, relation: dp_accounting.NeighboringRelation
) -> np.ndarray:
  """The RDP curve at :data:`RDP_ORDERS` of one step's event, from dp_accounting (cached).

  Args:
    event: a one-step event (e.g. from :func:`step_event`; DpEvents are frozen and hashable).
    relation: the neighbouring relation.

  Returns:
    A read-only float64 array, ``RdpAccountant(RDP_ORDERS, relation).compose(event).rdp``.
  """
  acc = rdp.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=relation)
  acc.compose(event)
  curve = acc.rdp
  curve.setflags(write=False)
  return curve


def grad_noise_multiplier(total_noise_multiplier: float, count_noise_multiplier: float) -> float:
  """Inverse of :func:`effective_noise_multiplier`: σ_g leaving σ_total overall.

  Raises:
    ConfigError: if the count query alone already exceeds the budget (2σ_b ≤ σ_total).
  """
  validation.positive("privacy.noise_multiplier", total_noise_multiplier)
  validation.positive("privacy.count_noise_multiplier", count_noise_multiplier)
  rest = total_noise_multiplier**-2 - (2.0 * count_noise_multiplier) ** -2
  if rest <= 0:
    raise validation.ConfigError(
      f"privacy.count_noise_multiplier={count_noise_multiplier!r} is invalid: must exceed "
      f"noise_multiplier/2={total_noise_multiplier / 2:.4g} so the gradient keeps some budget"
    )
  return rest**-0.5


def calibrate_noise_multiplier(
  target_epsilon: float,
  delta: float,
  *,
  schedule: Sequence[tuple[float, int]],
  sampling: str,
  sampling_rate: float,
  accountant: str = "rdp",
  dataset_size: int | None = None,
  conversion: str = "improved",
  tol: float = 1e-3,
) -> float:
  """The smallest base accounted multiplier ``z`` meeting (ε, δ) for a run of the σ schedule.

  The bracket is bounded so every accountant works at realistic settings in bounded memory and
  time: RDP is searched from a bracket grown around z = 1; PLD (which is tighter than RDP)
  starts from the RDP answer as its upper end and a fraction of it as its lower end, never
  below z = 0.3 (a PLD grid at z = 1e-3 needs tens of GiB).

  Args:
    target_epsilon: finite ε > 0.
    delta: δ in (0, 1).
    schedule: ``(relative_sigma, num_steps)`` segments; step noise is ``z · relative_sigma``.
    sampling: ``"poisson"`` or a fixed-size scheme.
    sampling_rate: q.
    accountant: ``"rdp"`` or ``"pld"``.
    dataset_size: N (fixed-size schemes).
    conversion: RDP conversion, as for :func:`epsilon` (reporting and calibration agree).
    tol: relative tolerance on z (the result errs on the private side).

  Returns:
    z such that ε(run) ≤ target_epsilon under ``accountant`` / ``conversion``.

  Raises:
    ConfigError: on invalid arguments, or if no z ≤ 1e4 meets the target.
  """
  validation.positive("privacy.target_epsilon", target_epsilon)
  if not math.isfinite(float(target_epsilon)):
    raise validation.ConfigError(
      f"privacy.target_epsilon={target_epsilon} is invalid: a finite ε > 0 "
      "(for non-private training set privacy.mechanism='none')"
    )
  validation.in_range("privacy.delta", delta, 0.0, 1.0)
  for _, n in schedule:
    validation.non_negative_int("num_steps", n)
  if not sum(int(n) for _, n in schedule):
    raise validation.ConfigError("num_steps=0 is invalid: calibration needs at least one step")

  def make_event(z: float) -> dp_accounting.DpEvent:
    segs = [(z * rel, n) for rel, n in schedule]
    return run_event(
      segs, sampling=sampling, sampling_rate=sampling_rate, dataset_size=dataset_size
    )

  def eps_at(z: float, acc_name: str) -> float:
    return epsilon(
      make_event(z), delta, accountant=acc_name, sampling=sampling, conversion=conversion
    )

  def search(acc_name: str, lo: float, hi: float) -> float:
    while eps_at(hi, acc_name) > target_epsilon:
      lo, hi = hi, hi * 2.0
      if hi > 1e4:
        raise validation.ConfigError(
          f"privacy.target_epsilon={target_epsilon} is invalid: not reachable with a noise "
          "multiplier <= 1e4 at this sampling rate and number of steps"
        )
    return float(
      dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(acc_name, sampling, conversion),
        make_event,
        target_epsilon,
        delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(lo, hi),
        tol=tol,
      )
    )

  make_accountant(accountant, sampling, conversion)  # Rejects unsupported combinations.
  z_rdp = search("rdp", 1e-2, 1.0)
  if accountant == "rdp":
    return z_rdp
  z_hi = max(z_rdp, 0.3)
  z_lo = max(0.3, 0.25 * z_rdp)
  if eps_at(z_lo, "pld") <= target_epsilon:
    return z_lo  # The PLD grid below z = 0.3 is not worth its memory: err on the private side.
  return search("pld", z_lo, z_hi)


def calibrate_steps(
  noise_multiplier: float,
  target_epsilon: float,
  delta: float,
  *,
  sampling: str,
  sampling_rate: float,
  accountant: str = "rdp",
  dataset_size: int | None = None,
  max_steps: int = 10_000_000,
) -> int:
  """The largest number of constant-z steps whose ε stays ≤ target (0 if even one exceeds).

  Args:
    noise_multiplier: the accounted z > 0 (σ under Poisson, σ/2 under shuffle).
    target_epsilon: ε > 0.
    delta: δ in (0, 1).
    sampling: ``"poisson"`` or ``"shuffle"``.
    sampling_rate: q.
    accountant: ``"rdp"`` or ``"pld"``.
    dataset_size: N (shuffle).
    max_steps: search ceiling.

  Returns:
    The step count (exact by bisection over integers with the accountant).
  """
  validation.positive("privacy.noise_multiplier", noise_multiplier)
  validation.positive("privacy.target_epsilon", target_epsilon)
  validation.positive_int("max_steps", max_steps)

  def eps_at(n: int) -> float:
    ev = run_event(
      [(noise_multiplier, n)],
      sampling=sampling,
      sampling_rate=sampling_rate,
      dataset_size=dataset_size,
    )
    return epsilon(ev, delta, accountant=accountant, sampling=sampling)

  return largest_within(eps_at, target_epsilon, max_steps)


def largest_within(eps_at, target_epsilon: float, max_steps: int) -> int:
  """Largest n in [0, max_steps] with ``eps_at(n) <= target`` (eps_at non-decreasing in n).

  Args:
    eps_at: ``eps_at(n) -> ε`` after n steps, non-decreasing in n.
    target_epsilon: the budget.
    max_steps: the upper end of the search.

  Returns:
    The largest n that fits (0 if none, or if ``max_steps`` ≤ 0).
  """
  if max_steps <= 0:
    return 0
  if eps_at(max_steps) <= target_epsilon:  # The common case (a calibrated run): one query.
    return max_steps
  if eps_at(1) > target_epsilon:
    return 0
  lo, hi = 1, 2
  while hi < max_steps and eps_at(hi) <= target_epsilon:
    lo, hi = hi, hi * 2
  hi = min(hi, max_steps)  # eps_at(hi) > target (eps_at(max_steps) was checked first).
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if eps_at(mid) <= target_epsilon:
      lo = mid
    else:
      hi = mid
  return lo


__all__ = [
  "ACCOUNTANTS",
  "CONVERSIONS",
  "FIXED_SAMPLINGS",
  "SAMPLINGS",
  "calibrate_noise_multiplier",
  "calibrate_steps",
  "classic_rdp_epsilon",
  "epsilon",
  "grad_noise_multiplier",
  "largest_within",
  "make_accountant",
  "neighboring_relation",
  "run_event",
  "step_event",
  "step_rdp",
]
