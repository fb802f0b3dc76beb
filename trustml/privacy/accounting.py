"""Privacy accounting with ``dp_accounting``: the DpEvent of a run, ε for δ, calibration.

Nothing here hand-rolls an accountant: every figure comes from ``dp_accounting``'s
``RdpAccountant`` or ``pld.PLDAccountant`` applied to a ``DpEvent`` that describes what ran.

Events by sampling scheme (see :func:`step_event`):

* ``poisson``: each example joins a step independently with probability ``q``:
  ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))`` under add/remove-one neighbouring.
* ``shuffle``: each step draws a fresh uniformly random subset of exactly ``B`` of the ``N``
  examples (without replacement inside the batch, independently across steps):
  ``SampledWithoutReplacementDpEvent(N, B, GaussianDpEvent(σ))`` under **replace-one**
  neighbouring (datasets of equal size differing in one example). Only the RDP accountant
  supports this event in dp_accounting 0.6; ``shuffle`` with ``pld`` is a ConfigError.

A run is the composition of what ran: consecutive steps with the same σ form a
``SelfComposedDpEvent``; a σ schedule is a ``ComposedDpEvent`` of those segments. Adaptive
clipping (a noisy clipped-count query on the same sampled batch) is folded in exactly through
:func:`effective_noise_multiplier` (two Gaussian queries on the same sample compose into one
Gaussian query of the stacked vector).

RDP→(ε, δ) conversion: dp_accounting's ``RdpAccountant.get_epsilon`` uses the *improved*
conversion (Canonne, Kamath & Steinke 2020, Prop. 12 of arXiv:2004.00010 v4).
``conversion="classic"`` applies the classic one, ε = min_α RDP(α) + log(1/δ)/(α − 1)
(Mironov 2017, Prop. 3), to the same RDP curve computed by dp_accounting — this is the
conversion behind the TF Privacy tutorial's ε ≈ 3.01.
"""

import math
from collections.abc import Sequence

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from trustml.core import validation

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "shuffle")
CONVERSIONS = ("improved", "classic")

# Orders of the RDP curve (dp_accounting's default set extended at the high end).
RDP_ORDERS = tuple(
  [1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)


def neighboring_relation(sampling: str) -> dp_accounting.NeighboringRelation:
  """The neighbouring relation under which a sampling scheme is accounted.

  Args:
    sampling: ``"poisson"`` (add/remove one example) or ``"shuffle"`` (replace one example).

  Returns:
    The dp_accounting ``NeighboringRelation``.
  """
  validation.one_of("privacy.sampling", sampling, SAMPLINGS)
  if sampling == "poisson":
    return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
  return dp_accounting.NeighboringRelation.REPLACE_ONE


def make_accountant(accountant: str, sampling: str) -> dp_accounting.PrivacyAccountant:
  """A fresh dp_accounting accountant for ``sampling``.

  Args:
    accountant: ``"rdp"`` or ``"pld"``.
    sampling: ``"poisson"`` or ``"shuffle"``.

  Returns:
    An empty ``RdpAccountant`` / ``PLDAccountant`` with the right neighbouring relation.

  Raises:
    ConfigError: on unknown names or ``shuffle`` with ``pld`` (unsupported by dp_accounting).
  """
  validation.one_of("privacy.accountant", accountant, ACCOUNTANTS)
  relation = neighboring_relation(sampling)
  if accountant == "rdp":
    return rdp.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=relation)
  if sampling == "shuffle":
    raise validation.ConfigError(
      "privacy.accountant='pld' is invalid with privacy.sampling='shuffle': dp_accounting's PLD "
      "accountant has no sampled-without-replacement event; use accountant='rdp'"
    )
  return pld.PLDAccountant(neighboring_relation=relation)


def validate_step_args(
  sampling: str, sampling_rate: float, noise_multiplier: float, dataset_size: int | None
) -> None:
  """Checks sampling and noise arguments (ConfigError naming the field)."""
  validation.one_of("privacy.sampling", sampling, SAMPLINGS)
  validation.in_range("privacy.sampling_rate", sampling_rate, 0.0, 1.0, high_inclusive=True)
  validation.non_negative("privacy.noise_multiplier", noise_multiplier)
  if sampling == "shuffle":
    if dataset_size is None:
      raise validation.ConfigError("dataset_size=None is invalid: shuffle accounting needs N")
    validation.positive_int("dataset_size", dataset_size)


def step_event(
  sampling: str, sampling_rate: float, noise_multiplier: float, *, dataset_size: int | None = None
) -> dp_accounting.DpEvent:
  """The DpEvent of ONE DP-SGD step.

  Args:
    sampling: ``"poisson"`` or ``"shuffle"``.
    sampling_rate: ``q`` (Poisson) or ``B / N`` (shuffle; ``B = round(q N)``).
    noise_multiplier: σ (noise std divided by the L2 sensitivity of the summed query).
    dataset_size: ``N``; required for ``shuffle``.

  Returns:
    ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))`` or
    ``SampledWithoutReplacementDpEvent(N, B, GaussianDpEvent(σ))``.

  Raises:
    ConfigError: on invalid arguments.
  """
  validate_step_args(sampling, sampling_rate, noise_multiplier, dataset_size)
  gaussian = dp_accounting.GaussianDpEvent(float(noise_multiplier))
  if sampling == "poisson":
    return dp_accounting.PoissonSampledDpEvent(float(sampling_rate), gaussian)
  batch = max(1, int(round(sampling_rate * dataset_size)))
  return dp_accounting.SampledWithoutReplacementDpEvent(int(dataset_size), batch, gaussian)


def run_event(
  segments: Sequence[tuple[float, int]],
  *,
  sampling: str,
  sampling_rate: float,
  dataset_size: int | None = None,
) -> dp_accounting.DpEvent:
  """The DpEvent of a run: the composition of its constant-σ segments, in order.

  Args:
    segments: ``(noise_multiplier, num_steps)`` pairs for the steps that ran.
    sampling: ``"poisson"`` or ``"shuffle"``.
    sampling_rate: ``q`` per step.
    dataset_size: ``N`` (required for shuffle).

  Returns:
    ``ComposedDpEvent`` of ``SelfComposedDpEvent(step_event(σ_k), n_k)``; ``NoOpDpEvent`` if no
    step ran.
  """
  events = []
  for sigma, count in segments:
    if count > 0:
      event = step_event(sampling, sampling_rate, sigma, dataset_size=dataset_size)
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
  validation.one_of("privacy.rdp_conversion", conversion, CONVERSIONS)
  acc = make_accountant(accountant, sampling)
  acc.compose(event)
  if accountant == "rdp" and conversion == "classic":
    return classic_rdp_epsilon(acc.orders, acc.rdp, delta)
  return float(acc.get_epsilon(delta))


def effective_noise_multiplier(
  grad_noise_multiplier: float, count_noise_multiplier: float
) -> float:
  """σ of one Gaussian query equivalent to a gradient query plus a clipped-count query.

  The gradient sum (sensitivity C, noise σ_g C) and the centred clipped count Σ(b_i − ½)
  (sensitivity ½, noise σ_b) on the same sample are one Gaussian query of the stacked vector
  with unit-noise sensitivity sqrt(1/σ_g² + 1/(2σ_b)²), i.e. noise multiplier
  (σ_g⁻² + (2σ_b)⁻²)^(-½) (Andrew et al. 2021, §3).

  Args:
    grad_noise_multiplier: σ_g > 0.
    count_noise_multiplier: σ_b > 0 (std of the noise on the count).

  Returns:
    The effective σ fed to the accountant.
  """
  validation.positive("grad_noise_multiplier", grad_noise_multiplier)
  validation.positive("count_noise_multiplier", count_noise_multiplier)
  return (grad_noise_multiplier**-2 + (2.0 * count_noise_multiplier) ** -2) ** -0.5


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
  tol: float = 1e-3,
) -> float:
  """The smallest base σ meeting (ε, δ) for a run of the given σ schedule.

  Args:
    target_epsilon: ε > 0.
    delta: δ in (0, 1).
    schedule: ``(relative_sigma, num_steps)`` segments; the run uses ``σ · relative_sigma``.
    sampling: ``"poisson"`` or ``"shuffle"``.
    sampling_rate: q.
    accountant: ``"rdp"`` or ``"pld"``.
    dataset_size: N (shuffle).
    tol: relative tolerance on σ (the result errs on the private side).

  Returns:
    σ such that ε(run) ≤ target_epsilon.

  Raises:
    ConfigError: on invalid arguments.
  """
  validation.positive("privacy.target_epsilon", target_epsilon)
  validation.in_range("privacy.delta", delta, 0.0, 1.0)

  def make_event(sigma: float) -> dp_accounting.DpEvent:
    segs = [(sigma * rel, n) for rel, n in schedule]
    return run_event(
      segs, sampling=sampling, sampling_rate=sampling_rate, dataset_size=dataset_size
    )

  sigma = dp_accounting.calibrate_dp_mechanism(
    lambda: make_accountant(accountant, sampling),
    make_event,
    target_epsilon,
    delta,
    bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
    tol=tol,
  )
  return float(sigma)


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
  """The largest number of constant-σ steps whose ε stays ≤ target (0 if even one exceeds).

  Args:
    noise_multiplier: σ > 0.
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
  """Largest n in [0, max_steps] with ``eps_at(n) <= target`` (eps_at non-decreasing in n)."""
  if eps_at(1) > target_epsilon:
    return 0
  lo, hi = 1, 2
  while hi <= max_steps and eps_at(hi) <= target_epsilon:
    lo, hi = hi, hi * 2
  if hi > max_steps:
    if eps_at(max_steps) <= target_epsilon:
      return max_steps
    hi = max_steps
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
  "SAMPLINGS",
  "calibrate_noise_multiplier",
  "calibrate_steps",
  "classic_rdp_epsilon",
  "effective_noise_multiplier",
  "epsilon",
  "grad_noise_multiplier",
  "largest_within",
  "make_accountant",
  "neighboring_relation",
  "run_event",
  "step_event",
]
