"""Validation of configs and public arguments, before any compute.

Every check raises :class:`ConfigError` (a ``ValueError``) whose message names the field and
the allowed range, e.g. ``privacy.delta=1.5 is invalid: must be in (0, 1)`` (an unknown key:
``privacy.deltaa is not a known field: allowed fields are ...``).

One naming convention for every validator:

* a config section ``<section>`` is checked by ``validate_<section>(section, *context) -> None``
  in the module that owns it: ``train.config.validate_train`` / ``validate_text`` /
  ``validate_mesh``, ``models.registry.validate_model``, ``data.sources.validate_data`` (which
  also returns the section with its defaults filled in), ``privacy.config.validate_privacy``,
  ``data.canaries.validate_canaries``, ``attacks.experiment.validate_attack``,
  ``federated.algorithms.validate_algorithm``;
* a pillar's whole config is checked by ``validate_config(config) -> None`` in the pillar's
  experiment module (``attacks.experiment``, ``fairness.experiment``,
  ``federated.population``), which calls ``train.experiment.validate_spine`` for the sections
  every pillar shares and the section validators for its own;
* a typed options object built from a section (``federated.dp.DpConfig``,
  ``federated.selection.Sampler``, ``fairness.sensitivity.ApsOptions``,
  ``attacks.extraction.ExtractionConfig``, ``data.synthetic.SyntheticConfig``) checks itself
  with ``.validate() -> self``;
* a public function checks its arguments with the helpers below (``positive_int``,
  ``in_range``, ...), named after the argument.
"""

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


class ConfigError(ValueError):
  """A config field or public argument has an invalid value."""


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ConfigError(f"{field}={value!r} is invalid: {allowed}")


def positive_int(field: str, value: Any) -> int:
  """Checks ``value`` is an int > 0 and returns it."""
  if isinstance(value, bool) or not isinstance(value, (int,)) or value <= 0:
    _fail(field, value, "must be a positive integer")
  return int(value)


def non_negative_int(field: str, value: Any) -> int:
  """Checks ``value`` is an int >= 0 and returns it."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    _fail(field, value, "must be a non-negative integer")
  return int(value)


def _as_float(field: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    _fail(field, value, "must be a number")
  value = float(value)
  if math.isnan(value):
    _fail(field, value, "must not be NaN")
  return value


def positive(field: str, value: Any) -> float:
  """Checks ``value`` is a finite-or-inf number > 0."""
  v = _as_float(field, value)
  if v <= 0:
    _fail(field, value, "must be > 0")
  return v


def non_negative(field: str, value: Any) -> float:
  """Checks ``value`` is a number >= 0."""
  v = _as_float(field, value)
  if v < 0:
    _fail(field, value, "must be >= 0")
  return v


def in_range(
  field: str,
  value: Any,
  low: float,
  high: float,
  *,
  low_inclusive: bool = False,
  high_inclusive: bool = False,
) -> float:
  """Checks ``value`` lies in the interval between ``low`` and ``high``.

  Args:
    field: dotted name reported in the error.
    value: the value to check.
    low: lower end.
    high: upper end.
    low_inclusive: whether ``low`` itself is allowed.
    high_inclusive: whether ``high`` itself is allowed.

  Returns:
    The value as float.

  Raises:
    ConfigError: if out of range.
  """
  v = _as_float(field, value)
  ok_low = v >= low if low_inclusive else v > low
  ok_high = v <= high if high_inclusive else v < high
  if not (ok_low and ok_high):
    lo = "[" if low_inclusive else "("
    hi = "]" if high_inclusive else ")"
    _fail(field, value, f"must be in {lo}{low}, {high}{hi}")
  return v


def one_of(field: str, value: Any, allowed: Iterable[Any]) -> Any:
  """Checks ``value`` is one of ``allowed``."""
  allowed = tuple(allowed)
  if value not in allowed:
    _fail(field, value, f"must be one of {', '.join(repr(a) for a in allowed)}")
  return value


def finite_array(field: str, value: Any, *, ndim: int | None = None) -> np.ndarray:
  """Converts ``value`` to a float64 array and checks it is finite (and of rank ``ndim``).

  Statistics call this on scores and embeddings, so one NaN fails loudly instead of turning
  every AUC or p-value into NaN (or 0).

  Raises:
    ConfigError: naming ``field``, the first bad position and value, or the wrong shape.
  """
  arr = np.asarray(value, dtype=np.float64)
  if ndim is not None and arr.ndim != ndim:
    raise ConfigError(f"{field} with shape {arr.shape} is invalid: must have {ndim} dimension(s)")
  bad = np.argwhere(~np.isfinite(arr))
  if bad.size:
    where = tuple(int(i) for i in bad[0])
    raise ConfigError(
      f"{field} is invalid: must be finite, but {bad.shape[0]} entries are NaN/inf "
      f"(first at index {where if arr.ndim != 1 else where[0]}: {arr[tuple(bad[0])]})"
    )
  return arr


def same_length(**arrays: Any) -> int:
  """Checks that every named array has the same length; returns it.

  Raises:
    ConfigError: naming every input and its length when they differ.
  """
  lengths = {
    name: len(np.asarray(a).reshape(-1)) if np.ndim(a) <= 1 else len(a)
    for name, a in arrays.items()
  }
  if len(set(lengths.values())) > 1:
    got = ", ".join(f"{k} has {v}" for k, v in lengths.items())
    raise ConfigError(f"input lengths are invalid: {got}; they must be equal")
  return next(iter(lengths.values()), 0)


def known_fields(
  section: str, given: Mapping[str, Any] | Iterable[str], allowed: Iterable[str]
) -> None:
  """Rejects unknown keys in a config section.

  Args:
    section: the section name, e.g. ``"privacy"``.
    given: the section (mapping or its keys).
    allowed: the allowed keys.

  Raises:
    ConfigError: naming the first unknown field and the allowed ones.
  """
  allowed = set(allowed)
  for key in given:
    if key not in allowed:
      raise ConfigError(
        f"{section}.{key} is not a known field: allowed fields are {', '.join(sorted(allowed))}"
      )


def required_sections(config: Any, sections: Iterable[str], *, needed_by: str, hint: str) -> None:
  """Rejects a config that lacks a top-level section a pillar needs (one line, no traceback).

  Args:
    config: the full config (a ConfigDict or mapping).
    sections: the sections the pillar reads.
    needed_by: who needs them, for the message (``"launch.federated"``).
    hint: where a suitable config comes from (``"configs/fed_nlu.py"``).

  Raises:
    ConfigError: ``config is invalid for <needed_by>: it lacks the section(s) ...``.
  """
  missing = [name for name in sections if name not in config]
  if missing:
    raise ConfigError(
      f"config is invalid for {needed_by}: it lacks the section(s) {', '.join(missing)} "
      f"(start from {hint})"
    )


def warn_large_delta(field: str, delta: Any, num_units: int, units: str = "examples") -> bool:
  """Logs a warning when a DP δ exceeds ``1 / num_units`` (and says so).

  A mechanism that publishes one random unit (example, user) in the clear is (0, 1/N)-DP, so
  a δ above 1/N permits that; the usual choice is δ < 1/N.

  Args:
    field: dotted name of δ (``"privacy.delta"``, ``"dp.delta"``).
    delta: the δ of the run.
    num_units: N, the units of privacy in the data (training examples, users).
    units: what the units are, for the message.

  Returns:
    Whether the warning was issued.
  """
  from absl import logging  # noqa: PLC0415  (validation stays importable without absl set up)

  if num_units <= 0 or float(delta) <= 1.0 / num_units:
    return False
  logging.warning(
    "%s=%g is larger than 1/N = 1/%d (%s): such a δ allows releasing one of them in the clear; "
    "choose δ < %.2g",
    field,
    float(delta),
    num_units,
    units,
    1.0 / num_units,
  )
  return True


__all__ = [
  "ConfigError",
  "finite_array",
  "in_range",
  "known_fields",
  "non_negative",
  "non_negative_int",
  "one_of",
  "positive",
  "positive_int",
  "required_sections",
  "same_length",
  "warn_large_delta",
]
