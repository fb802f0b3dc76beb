"""The privacy ledger: what ran, its ε, the budget stop, stored in the checkpoint.

The training loop (``trustml.train.loop.train``) calls, per step, ``ledger.can_step(step)``
before computing anything, then ``ledger.record(step, aux)`` after the update, and stores
``ledger.state_dict()`` (plain JSON) in every checkpoint, so a resumed run composes exactly the
same events and reports the same ε as an uninterrupted one.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from trustml.core import validation
from trustml.privacy import accounting


class PrivacyLedger:
  """Event ledger of a DP-SGD run with an optional ε budget.

  Args:
    sampling: ``"poisson"`` or ``"shuffle"``.
    sampling_rate: q per step.
    delta: δ in (0, 1) at which ε is reported.
    noise_fn: ``noise_fn(step) -> σ`` the *accounted* noise multiplier of step ``step``
      (effective σ including the adaptive-clipping count query); must be deterministic.
    accountant: ``"rdp"`` or ``"pld"``.
    conversion: RDP→DP conversion (``"improved"`` or ``"classic"``).
    dataset_size: N.
    target_epsilon: budget; ``None`` for no budget stop.
    max_steps: the configured number of steps (bounds the budget search).
    truncation_prob: probability that one step's Poisson sample was truncated (0 if never).
    clip_update_fn: optional ``fn(clip_norm, aux) -> clip_norm`` applied in :meth:`record`
      (adaptive clipping); the clip norm lives in the ledger so it is checkpointed.
    initial_clip_norm: C at step 0.
    extra_summary: static ``privacy/...`` facts added to :meth:`summary`.

  Formal guarantees:
    After ``n`` recorded steps, ``epsilon()`` bounds the (ε, δ)-DP of the ``n`` steps under the
    neighbouring relation of ``sampling``, provided each step was a sampled Gaussian sum query
    of L2 sensitivity C with noise σ_n·C (``noise_fn``). With Poisson truncation the total δ is
    ``delta + (1 + e^ε)·Σ P(truncation)`` (:meth:`summary` reports both). ``can_step`` returns
    False for the first step whose composition would exceed ``target_epsilon``.
  """

  def __init__(
    self,
    *,
    sampling: str,
    sampling_rate: float,
    delta: float,
    noise_fn: Callable[[int], float],
    accountant: str = "rdp",
    conversion: str = "improved",
    dataset_size: int | None = None,
    target_epsilon: float | None = None,
    max_steps: int = 1_000_000,
    truncation_prob: float = 0.0,
    clip_update_fn: Callable[[float, Mapping[str, Any]], float] | None = None,
    initial_clip_norm: float = 1.0,
    extra_summary: Mapping[str, Any] | None = None,
  ):
    accounting.validate_step_args(sampling, sampling_rate, 0.0, dataset_size)
    validation.in_range("privacy.delta", delta, 0.0, 1.0)
    validation.one_of("privacy.accountant", accountant, accounting.ACCOUNTANTS)
    validation.one_of("privacy.rdp_conversion", conversion, accounting.CONVERSIONS)
    if target_epsilon is not None:
      validation.positive("privacy.target_epsilon", target_epsilon)
    accounting.make_accountant(accountant, sampling)  # Rejects unsupported combinations.
    self.sampling = sampling
    self.sampling_rate = float(sampling_rate)
    self.delta = float(delta)
    self.noise_fn = noise_fn
    self.accountant = accountant
    self.conversion = conversion
    self.dataset_size = dataset_size
    self.target_epsilon = target_epsilon
    self.max_steps = int(max_steps)
    self.truncation_prob = float(truncation_prob)
    self.clip_update_fn = clip_update_fn
    self.segments: list[list[float]] = []  # [[sigma, count], ...] in order of execution.
    self.steps = 0
    self.clip_norm = float(initial_clip_norm)
    self.counters: dict[str, float] = {}
    self.stopped_reason = ""
    self._limit: int | None = None
    self.extra_summary = dict(extra_summary or {})

  # ----------------------------------------------------------------------------------------
  def _schedule_segments(self, num_steps: int) -> list[tuple[float, int]]:
    segs: list[list[float]] = []
    for s in range(num_steps):
      sigma = float(self.noise_fn(s))
      if segs and segs[-1][0] == sigma:
        segs[-1][1] += 1
      else:
        segs.append([sigma, 1])
    return [(s, int(n)) for s, n in segs]

  def _eps(self, segments) -> float:
    event = accounting.run_event(
      segments,
      sampling=self.sampling,
      sampling_rate=self.sampling_rate,
      dataset_size=self.dataset_size,
    )
    return accounting.epsilon(
      event,
      self.delta,
      accountant=self.accountant,
      sampling=self.sampling,
      conversion=self.conversion,
    )

  def step_limit(self) -> int:
    """The number of steps of the schedule that fit in the budget (``max_steps`` if no budget)."""
    if self.target_epsilon is None:
      return self.max_steps
    if self._limit is None:
      self._limit = accounting.largest_within(
        lambda n: self._eps(self._schedule_segments(n)), self.target_epsilon, self.max_steps
      )
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

  def record(self, step: int, aux: Mapping[str, Any]) -> None:
    """Records that step ``step`` ran (its σ from ``noise_fn``) and folds in its counters.

    Args:
      step: the index of the step that ran.
      aux: scalars returned by the DP gradient function (``dp/...`` counters are summed).
    """
    if step != self.steps:
      raise ValueError(f"ledger.record({step}) out of order: {self.steps} steps recorded")
    sigma = float(self.noise_fn(step))
    if self.segments and self.segments[-1][0] == sigma:
      self.segments[-1][1] += 1
    else:
      self.segments.append([sigma, 1])
    self.steps += 1
    for key in ("dp/num_examples", "dp/num_nonfinite", "dp/num_clipped", "dp/num_truncated"):
      if key in aux:
        self.counters[key] = self.counters.get(key, 0.0) + float(np.asarray(aux[key]))
    if self.clip_update_fn is not None:
      self.clip_norm = float(self.clip_update_fn(self.clip_norm, aux))

  def epsilon(self) -> float:
    """ε at δ of the recorded steps."""
    return self._eps([(s, int(n)) for s, n in self.segments])

  def state_dict(self) -> dict[str, Any]:
    """JSON-serialisable state for the checkpoint."""
    return {
      "segments": [[float(s), int(n)] for s, n in self.segments],
      "steps": self.steps,
      "clip_norm": self.clip_norm,
      "counters": dict(self.counters),
      "stopped_reason": self.stopped_reason,
    }

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores the state written by :meth:`state_dict`."""
    self.segments = [[float(s), int(n)] for s, n in state["segments"]]
    self.steps = int(state["steps"])
    self.clip_norm = float(state["clip_norm"])
    self.counters = {k: float(v) for k, v in state.get("counters", {}).items()}
    self.stopped_reason = str(state.get("stopped_reason", ""))

  def summary(self) -> dict[str, Any]:
    """The ``privacy/...`` keys of ``summary.json``."""
    eps = self.epsilon() if self.steps else 0.0
    trunc = self.truncation_prob * self.steps
    trunc_delta = (1.0 + math.exp(min(eps, 700.0))) * trunc if trunc > 0 else 0.0
    sigmas = [s for s, _ in self.segments]
    out = {
      "privacy/epsilon": eps,
      "privacy/delta": self.delta,
      "privacy/truncation_delta": trunc_delta,
      "privacy/total_delta": self.delta + trunc_delta,
      "privacy/noise_multiplier": sigmas[-1] if sigmas else float(self.noise_fn(0)),
      "privacy/l2_clip_norm": self.clip_norm,
      "privacy/sampling_rate": self.sampling_rate,
      "privacy/sampling": self.sampling,
      "privacy/steps": self.steps,
      "privacy/accountant": self.accountant,
      "privacy/rdp_conversion": self.conversion if self.accountant == "rdp" else "n/a",
      "privacy/budget_stopped": bool(self.stopped_reason),
    }
    if self.target_epsilon is not None:
      out["privacy/target_epsilon"] = self.target_epsilon
    out.update(self.extra_summary)
    for key, value in self.counters.items():
      out["privacy/" + key.split("/", 1)[1]] = value
    return out


__all__ = ["PrivacyLedger"]
