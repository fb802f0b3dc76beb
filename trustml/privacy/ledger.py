"""The privacy ledger: a record of what each step actually ran, its ε, the budget stop.

The ledger is shared by every DP path (central DP-SGD / eDP-SGD, user-level DP-FedAvg). Each
step or round, the caller passes the values that ran — the std of every noise draw and the
sensitivity of what it noised (from the mechanism's ``aux``), and the sampling that produced
the batch or cohort (scheme, q, N, fixed size B, per-step truncation probability, from the
sampler) — and the ledger stores a run-length-encoded list of :class:`StepRecord`. ε is
composed from those records with ``dp_accounting``, never from the config.

The ledger also holds the run's :class:`~trustml.core.rng.SecretStreams` (the entropy of every
DP draw) and a fingerprint of the run's config; :meth:`PrivacyLedger.state_dict` goes into
every checkpoint (and nowhere else), and :meth:`PrivacyLedger.load_state_dict` refuses a
checkpoint written under a different config.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import dp_accounting
import numpy as np

from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.privacy import accounting, aggregators

_REL_TOL = 2e-6  # float32 device values within this of the plan are the planned value.


@dataclasses.dataclass(frozen=True)
class StepRecord:
  """The accounting-relevant facts of one step (or round) as it ran.

  Attributes:
    sampling: ``"poisson"`` or a fixed-size scheme (``"shuffle"``, ``"fixed"``).
    sampling_rate: q (Poisson) or B / N.
    dataset_size: N (units: examples or users).
    batch_size: B for fixed-size schemes, 0 for Poisson.
    noise_multiplier: the accounted z = ((Δ_s/std_s)² + (Δ_c/std_c)²)^(-½) of the step.
    truncation_prob: P(the Poisson sample was truncated to its cap) at N + 1 units (0 if none).
  """

  sampling: str
  sampling_rate: float
  dataset_size: int
  batch_size: int
  noise_multiplier: float
  truncation_prob: float = 0.0

  def event(self) -> dp_accounting.DpEvent:
    """The dp_accounting event of this step."""
    return accounting.step_event(
      self.sampling,
      self.sampling_rate,
      self.noise_multiplier,
      dataset_size=self.dataset_size,
      batch_size=self.batch_size or None,
    )

  def to_json(self) -> dict[str, Any]:
    """A JSON form (checkpoint and ``summary.json``)."""
    return dataclasses.asdict(self)


def records_event(segments: list[tuple[StepRecord, int]]) -> dp_accounting.DpEvent:
  """The DpEvent of run-length-encoded records, in order of execution."""
  events = [dp_accounting.SelfComposedDpEvent(r.event(), int(n)) for r, n in segments if n > 0]
  if not events:
    return dp_accounting.NoOpDpEvent()
  return events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)


def _close(actual: float, planned: float) -> bool:
  return abs(actual - planned) <= _REL_TOL * max(abs(planned), 1e-30)


class PrivacyLedger:
  """Records what ran, composes its ε, keeps the run's secret, and stops at the budget.

  Args:
    aggregator: the clipped aggregator of the path (unit, relation, sensitivities).
    plan_fn: ``plan_fn(step) -> StepRecord`` of the planned step (deterministic); used to fill
      the sampling fields of :meth:`record` and to plan the budget stop.
    delta: δ in (0, 1) at which ε is reported.
    accountant: ``"rdp"`` or ``"pld"``.
    conversion: RDP→DP conversion (``"improved"`` or ``"classic"``).
    target_epsilon: budget; ``None`` for no budget stop.
    max_steps: the planned number of steps.
    secret: the run's secret streams; ``None`` draws fresh OS entropy.
    noise_seed_fixed: the secret comes from an explicit ``noise_seed``.
    release_unsafe_stats: the run also releases exact statistics of its private data.
    fingerprint: fingerprint of the run's config (refuses a checkpoint of another config).
    config: the run's config as JSON (names differing fields when refusing).
    extra_summary: static ``privacy/...`` facts added to :meth:`summary`.

  Formal guarantees:
    After the recorded steps, :meth:`epsilon` bounds the (ε, δ)-DP of everything those steps
    released (the noised sums and counts, and all post-processing of them: parameters, the
    adaptive clip norm) under ``aggregator.relation`` for ``aggregator.unit``, provided each
    step was the sampled Gaussian query its record describes. With Poisson truncation the
    guarantee holds at ``total_delta = δ + (1 + e^ε)·Σ_t P(truncation at t)`` (the truncated
    and untruncated mechanisms differ only on that event). ``can_step`` refuses the first step
    whose composition with the recorded history would exceed ``target_epsilon``. Not covered:
    anything released outside the ledger's steps (e.g. ``release_unsafe_stats``, which
    :meth:`summary` marks with ``privacy/covered_by_epsilon: false``).
  """

  def __init__(
    self,
    *,
    aggregator: aggregators.ClippedAggregator,
    plan_fn: Callable[[int], StepRecord],
    delta: float,
    accountant: str = "rdp",
    conversion: str = "improved",
    target_epsilon: float | None = None,
    max_steps: int = 1_000_000,
    secret: rng_lib.SecretStreams | None = None,
    noise_seed_fixed: bool = False,
    release_unsafe_stats: bool = False,
    fingerprint: str = "",
    config: Mapping[str, Any] | None = None,
    extra_summary: Mapping[str, Any] | None = None,
  ):
    validation.in_range("privacy.delta", delta, 0.0, 1.0)
    validation.one_of("privacy.accountant", accountant, accounting.ACCOUNTANTS)
    validation.one_of("privacy.rdp_conversion", conversion, accounting.CONVERSIONS)
    if target_epsilon is not None:
      validation.positive("privacy.target_epsilon", target_epsilon)
    validation.non_negative_int("max_steps", max_steps)
    first = plan_fn(0)
    accounting.make_accountant(accountant, first.sampling, conversion)  # Rejects bad combos.
    self.aggregator = aggregator
    self.plan_fn = plan_fn
    self.delta = float(delta)
    self.accountant = accountant
    self.conversion = conversion
    self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
    self.max_steps = int(max_steps)
    self.secret = secret or rng_lib.SecretStreams.fresh()
    self.noise_seed_fixed = bool(noise_seed_fixed)
    self.release_unsafe_stats = bool(release_unsafe_stats)
    self.fingerprint = fingerprint
    self.config = dict(config) if config is not None else None
    self.extra_summary = dict(extra_summary or {})
    self.segments: list[list[Any]] = []  # [[StepRecord, count], ...] in order of execution.
    self.steps = 0
    self.last: dict[str, float] = {}  # Values of the last recorded step (σ, C, z): DP or public.
    self.unsafe: dict[str, float] = {}
    self.stopped_reason = ""
    self._limit: int | None = None
    self._eps_cache: tuple[int, float] | None = None

  # -- accounting ---------------------------------------------------------------------------
  def _history(self) -> list[tuple[StepRecord, int]]:
    return [(r, int(n)) for r, n in self.segments]

  def _eps(self, segments: list[tuple[StepRecord, int]]) -> float:
    first = segments[0][0] if segments else self.plan_fn(0)
    return accounting.epsilon(
      records_event(segments),
      self.delta,
      accountant=self.accountant,
      sampling=first.sampling,
      conversion=self.conversion,
    )

  def _with_plan(self, num_planned: int) -> list[tuple[StepRecord, int]]:
    segs = [list(s) for s in self.segments]
    for s in range(self.steps, self.steps + num_planned):
      r = self.plan_fn(s)
      if segs and segs[-1][0] == r:
        segs[-1][1] += 1
      else:
        segs.append([r, 1])
    return [(r, int(n)) for r, n in segs]

  def step_limit(self) -> int:
    """Total steps (recorded + planned) that fit in the budget (``max_steps`` if no budget)."""
    if self.target_epsilon is None:
      return self.max_steps
    if self._limit is None:
      remaining = max(self.max_steps - self.steps, 0)
      if self.steps and self._eps(self._history()) > self.target_epsilon:
        self._limit = self.steps
      elif remaining == 0:
        self._limit = self.steps
      else:
        fit = accounting.largest_within(
          lambda n: self._eps(self._with_plan(n)), self.target_epsilon, remaining
        )
        self._limit = self.steps + fit
    return self._limit

  def can_step(self, step: int) -> tuple[bool, str]:
    """Whether step ``step`` (0-based) may run without exceeding the budget.

    Args:
      step: the index of the step about to run; must equal the number of recorded steps.

    Returns:
      ``(ok, reason)``; ``reason`` explains a refusal.
    """
    if step != self.steps:
      return False, f"ledger has {self.steps} recorded steps but the loop is at step {step}"
    limit = self.step_limit()
    if step >= limit:
      self.stopped_reason = (
        f"privacy budget stop: step {step + 1} would exceed target epsilon "
        f"{self.target_epsilon} at delta {self.delta} ({limit} steps fit)"
      )
      return False, self.stopped_reason
    return True, ""

  def record(self, step: int, aux: Mapping[str, Any]) -> StepRecord:
    """Records that step ``step`` ran, from the values its mechanism reports in ``aux``.

    Args:
      step: the index of the step that ran.
      aux: the mechanism's ``dp/...`` values (``noise_std``, ``sensitivity``,
        ``count_noise_std``, ``count_sensitivity``, ``l2_clip_norm``, ``noise_multiplier``);
        ``unsafe/...`` counters are kept only with ``release_unsafe_stats``.

    Returns:
      The record that was appended.

    Raises:
      ValueError: if ``step`` is out of order or ``aux`` lacks the noise values.
    """
    if step != self.steps:
      raise ValueError(f"ledger.record({step}) out of order: {self.steps} steps recorded")
    if "dp/noise_std" not in aux or "dp/sensitivity" not in aux:
      raise ValueError("ledger.record: aux must carry dp/noise_std and dp/sensitivity")
    value = lambda k: float(np.asarray(aux.get(k, 0.0)))  # noqa: E731
    z = aggregators.effective_noise_multiplier(
      value("dp/noise_std"),
      value("dp/sensitivity"),
      value("dp/count_noise_std"),
      value("dp/count_sensitivity"),
    )
    planned = self.plan_fn(step)
    if _close(z, planned.noise_multiplier):
      rec = planned
    else:  # What ran differs from the plan: account what ran, re-plan the budget.
      rec = dataclasses.replace(planned, noise_multiplier=z)
      self._limit = None
    if self.segments and self.segments[-1][0] == rec:
      self.segments[-1][1] += 1
    else:
      self.segments.append([rec, 1])
    self.steps += 1
    self.last = {
      "noise_multiplier": rec.noise_multiplier * self.aggregator.sensitivity_factor,
      "gradient_noise_multiplier": value("dp/noise_multiplier"),
      "accounted_noise_multiplier": rec.noise_multiplier,
      "l2_clip_norm": value("dp/l2_clip_norm"),
    }
    if self.release_unsafe_stats:
      for key, v in aux.items():
        if key.startswith("unsafe/"):
          self.unsafe[key] = self.unsafe.get(key, 0.0) + float(np.asarray(v))
    return rec

  def epsilon(self) -> float:
    """ε at δ of the recorded steps (0 before any step)."""
    if not self.steps:
      return 0.0
    if self._eps_cache is None or self._eps_cache[0] != self.steps:
      self._eps_cache = (self.steps, self._eps(self._history()))
    return self._eps_cache[1]

  def truncation_delta(self, eps: float) -> float:
    """``(1 + e^ε)·Σ_t P(truncation at t)`` over the recorded steps."""
    total = sum(r.truncation_prob * n for r, n in self.segments)
    return (1.0 + math.exp(min(eps, 700.0))) * total if total > 0 else 0.0

  # -- persistence ---------------------------------------------------------------------------
  def state_dict(self) -> dict[str, Any]:
    """JSON-serialisable state for the checkpoint (holds the secret: checkpoint only)."""
    return {
      "segments": [[r.to_json(), int(n)] for r, n in self.segments],
      "steps": self.steps,
      "last": dict(self.last),
      "unsafe": dict(self.unsafe),
      "stopped_reason": self.stopped_reason,
      "secret": self.secret.to_hex(),
      "fingerprint": self.fingerprint,
      "config": self.config,
    }

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores :meth:`state_dict`; refuses a checkpoint of a different config.

    Raises:
      ConfigError: naming the differing fields when the stored fingerprint differs.
    """
    stored_fp = state.get("fingerprint", "")
    if self.fingerprint and stored_fp != self.fingerprint:
      from trustml.train import workdir as workdir_lib  # Lazy: train imports privacy.

      message = ""
      if self.config is not None and state.get("config") is not None:
        message = workdir_lib.refusal("(checkpoint)", state["config"], self.config)
      raise validation.ConfigError(
        message or "privacy ledger=checkpoint is invalid: it was written by a different run config"
      )
    self.segments = [[StepRecord(**r), int(n)] for r, n in state["segments"]]
    self.steps = int(state["steps"])
    self.last = {k: float(v) for k, v in state.get("last", {}).items()}
    self.unsafe = {k: float(v) for k, v in state.get("unsafe", {}).items()}
    self.stopped_reason = str(state.get("stopped_reason", ""))
    self.secret = rng_lib.SecretStreams.from_hex(state["secret"])
    self._limit = None
    self._eps_cache = None

  # -- reporting -----------------------------------------------------------------------------
  def progress(self) -> dict[str, float]:
    """ε spent so far and the last step's σ and C (logged every ``log_every`` steps)."""
    out = {"privacy/epsilon": self.epsilon()}
    if self.last:
      out["privacy/noise_multiplier"] = self.last["noise_multiplier"]
      out["privacy/l2_clip_norm"] = self.last["l2_clip_norm"]
    return out

  def summary(self) -> dict[str, Any]:
    """The ``privacy/...`` keys of ``summary.json`` (nothing here is an exact private statistic).

    Returns:
      ``privacy/epsilon`` (at ``privacy/delta``), ``privacy/total_delta`` (with truncation),
      of the last step σ (``noise_multiplier``: the total std / C, = z·Δ/C), the gradient's
      share σ_g (``gradient_noise_multiplier``, < σ under adaptive clipping) and the accounted
      z, C, the sampling, the unit and relation,
      the records ε is composed from (``privacy/ledger``), and whether the run's outputs are
      all covered (``privacy/covered_by_epsilon``).
    """
    eps = self.epsilon()
    trunc_delta = self.truncation_delta(eps)
    plan0 = self.plan_fn(0)
    last = self.last or {
      "noise_multiplier": plan0.noise_multiplier * self.aggregator.sensitivity_factor,
      "gradient_noise_multiplier": float("nan"),
      "accounted_noise_multiplier": plan0.noise_multiplier,
      "l2_clip_norm": float("nan"),
    }
    out: dict[str, Any] = {
      "privacy/epsilon": eps,
      "privacy/delta": self.delta,
      "privacy/truncation_delta": trunc_delta,
      "privacy/total_delta": self.delta + trunc_delta,
      "privacy/noise_multiplier": last["noise_multiplier"],
      "privacy/gradient_noise_multiplier": last["gradient_noise_multiplier"],
      "privacy/accounted_noise_multiplier": last["accounted_noise_multiplier"],
      "privacy/l2_clip_norm": last["l2_clip_norm"],
      "privacy/sampling_rate": plan0.sampling_rate,
      "privacy/sampling": plan0.sampling,
      "privacy/steps": self.steps,
      "privacy/accountant": self.accountant,
      "privacy/rdp_conversion": self.conversion if self.accountant == "rdp" else "n/a",
      "privacy/budget_stopped": bool(self.stopped_reason),
      "privacy/ledger": [[r.to_json(), int(n)] for r, n in self.segments],
      "privacy/noise_seed_fixed": self.noise_seed_fixed,
      "privacy/covered_by_epsilon": not self.release_unsafe_stats,
    }
    out.update(self.aggregator.describe())
    if self.noise_seed_fixed:
      out["privacy/guarantee_note"] = (
        "privacy.noise_seed is set: the guarantee assumes that seed stays secret"
      )
    if self.target_epsilon is not None:
      out["privacy/target_epsilon"] = self.target_epsilon
    out.update(self.extra_summary)
    if self.release_unsafe_stats:
      out.update({"unsafe/" + k.split("/", 1)[1]: v for k, v in self.unsafe.items()})
    return out


__all__ = ["PrivacyLedger", "StepRecord", "records_event"]
