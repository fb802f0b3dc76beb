"""What a run prints: progress visible anywhere (notebook, script, ``app.run``), no third-party noise.

trustml logs through ``absl.logging``. Under ``app.run`` (the launch scripts) absl shows INFO
lines on stderr; in a notebook or a plain script absl shows only warnings until its flags are
parsed, so a run looks silent. :func:`show_progress` turns INFO on there. :func:`quiet_third_party`
drops, in one place, the lines of other libraries that carry no information for a trustml user:

* dp_accounting's ``_compute_log_a_frac failed to converge ... Excluding this order`` warnings
  (7 to 84 per DP run: the RDP accountant skips an order it cannot evaluate; the ε reported is
  still a valid upper bound, taken over the remaining orders);
* orbax-checkpoint's INFO (and finer) lines (about 40 per federated smoke run); its warnings
  and errors still show;
* jax's INFO line about backends it could not initialise (``Unable to initialize backend
  'tpu'`` on a machine without one).

:func:`summary_line` renders a run's summary as the one human line the launchers print last.

Example:
  >>> from trustml.core import logs
  >>> logs.show_progress()  # In a notebook: step lines and ETA appear under the cell.
"""

import logging
import math
from collections.abc import Mapping
from typing import Any

from absl import flags
from absl import logging as absl_logging

_DP_ACCOUNTING_NOISE = ("failed to converge", "Excluding this order")


class ThirdPartyFilter(logging.Filter):
  """Drops dp_accounting's non-convergence warnings, orbax's and jax's backend INFO lines."""

  def filter(self, record: logging.LogRecord) -> bool:
    """Returns ``False`` for a record to drop.

    Args:
      record: the log record.

    Returns:
      Whether the record is kept.
    """
    path = (record.pathname or "").replace("\\", "/")
    if "/dp_accounting/" in path or record.name.startswith("dp_accounting"):
      message = record.getMessage()
      if any(part in message for part in _DP_ACCOUNTING_NOISE):
        return False
    if "/orbax/" in path or record.name.startswith("orbax"):
      return record.levelno > logging.INFO
    if path.endswith("jax/_src/xla_bridge.py") and record.levelno <= logging.INFO:
      return False  # "Unable to initialize backend 'tpu'" on machines without one.
    return True


_FILTER = ThirdPartyFilter()


def quiet_third_party() -> None:
  """Installs :class:`ThirdPartyFilter` (idempotent) on the loggers third-party lines pass.

  The filter sits on the ``absl`` logger (dp_accounting and orbax log through absl), on the
  ``orbax`` and ``dp_accounting`` Python loggers, and on the handlers of the root logger, so
  it applies whichever way a record travels.
  """
  targets: list[Any] = [logging.getLogger(n) for n in ("absl", "orbax", "dp_accounting")]
  targets.append(absl_logging.get_absl_handler())
  targets.extend(logging.getLogger().handlers)
  for target in targets:
    if _FILTER not in target.filters:
      target.addFilter(_FILTER)


def show_progress(level: int = absl_logging.INFO) -> None:
  """Makes trustml's progress lines visible outside ``app.run`` (notebooks, scripts).

  Sets absl's verbosity to ``level`` and routes absl records to stderr through absl's handler
  when the root logger has no handler yet. Under ``app.run`` (flags parsed) it only installs
  the third-party filter, so ``--verbosity`` keeps its meaning.

  Args:
    level: absl verbosity (``absl.logging.INFO`` = 0, ``WARNING`` = -1).
  """
  if not flags.FLAGS.is_parsed():
    absl_logging.set_verbosity(level)
    if not logging.getLogger().handlers:
      absl_logging.use_absl_handler()
  quiet_third_party()


# The figures a one-line summary names, in order: (summary key, label, format).
_HEADLINE = (
  ("eval/accuracy", "accuracy", "{:.3f}"),
  ("eval/perplexity", "perplexity", "{:.2f}"),
  ("mia/auc", "MIA AUC", "{:.3f}"),
  ("audit/epsilon_lower_bound", "audit ε_LB", "{:.2f}"),
  ("canary/exposure_mean", "exposure", "{:.2f} bits"),
  ("canary/extraction_exact_match", "extraction", "{:.2f}"),
  ("fairness/aps", "APS", "{:.4g}"),
  ("fairness/counterfactual_gap", "counterfactual gap", "{:.4g}"),
  ("bias_auc/gmb_subgroup", "GMB-Subgroup", "{:.3f}"),
  ("bias_auc/gmb_bpsn", "GMB-BPSN", "{:.3f}"),
  ("bias_auc/gmb_bnsp", "GMB-BNSP", "{:.3f}"),
  ("association/effect_size", "effect size", "{:.3f}"),
  ("generation/gender_disparity", "gender disparity", "{:.3f}"),
)


def _number(value: Any) -> float | None:
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str) and value in ("inf", "Infinity"):
    return math.inf
  return None


def summary_line(summary: Mapping[str, Any], workdir: str | None = None) -> str:
  """One human line for a run's summary: headline metrics, ε, steps or rounds, wall time.

  Args:
    summary: the flat summary (``summary.json``).
    workdir: where the run's files are (named at the end of the line when given).

  Returns:
    e.g. ``"done: accuracy 0.999, ε = 3.00 (δ = 1e-05), 166 steps in 20 s; files in runs/x"``.

  Example:
    >>> summary_line({"eval/accuracy": 0.5, "train/steps": 6})
    'done: accuracy 0.500, 6 steps'
  """
  parts = []
  for key, label, fmt in _HEADLINE:
    v = _number(summary.get(key))
    if v is not None and math.isfinite(v):
      parts.append(f"{label} {fmt.format(v)}")
  eps = _number(summary.get("privacy/epsilon"))
  if eps is not None:
    delta = _number(summary.get("privacy/delta"))
    text = "ε = ∞ (not private)" if math.isinf(eps) else f"ε = {eps:.2f}"
    if delta is not None and math.isfinite(eps):
      text += f" (δ = {delta:g})"
    parts.append(text)
  rounds = _number(summary.get("fed/rounds"))
  steps = _number(summary.get("train/steps"))
  if rounds is not None:
    parts.append(f"{int(rounds)} rounds")
  elif steps is not None:
    parts.append(f"{int(steps)} steps")
  wall = _number(summary.get("train/wall_seconds") or summary.get("fed/wall_seconds"))
  if wall is not None and parts:
    parts[-1] += f" in {wall:.0f} s"
  line = "done: " + (", ".join(parts) if parts else f"{len(summary)} figures")
  if workdir:
    line += f"; files in {workdir}"
  return line


__all__ = ["ThirdPartyFilter", "quiet_third_party", "show_progress", "summary_line"]
