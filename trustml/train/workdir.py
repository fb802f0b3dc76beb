"""A workdir holds exactly one run: claim it, or refuse with one line naming what differs.

Every launcher calls :func:`claim` before it writes anything. A fresh (or empty) directory is
claimed by writing ``config.json``; a directory whose ``config.json`` (or whose newest
checkpoint's stored config) differs from the new config in *any* field is refused with a
:class:`~trustml.core.validation.ConfigError` naming the differing fields, and nothing in it is
changed. Re-running the same config resumes (the caller restores the checkpoint).

The check is by value on the JSON form of the resolved config, so it catches a changed
learning rate as well as a changed ε, sampling rate or noise seed.
"""

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from trustml.core import validation

_MAX_NAMED = 6  # Differing fields named in the error line.


def config_dict(config: Any) -> dict[str, Any]:
  """The JSON form of a config (what ``config.json`` holds).

  Args:
    config: a ConfigDict or mapping.

  Returns:
    A plain dict of JSON values (floats that are not finite become strings).
  """
  from trustml.train import writers  # Lazy: writers is the one JSON encoder of the contract.

  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(writers.jsonable(d), sort_keys=True))


def fingerprint(config: Any) -> str:
  """SHA-256 of the canonical JSON form of ``config`` (stored in checkpoints and ledgers)."""
  text = json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def differing_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """Dotted names of the fields whose values differ (or exist in only one), sorted.

  Args:
    old: the stored config (JSON form).
    new: the new config (JSON form).

  Returns:
    ``["privacy.target_epsilon: 3.0 -> 2.0", ...]``.
  """
  a, b = _flatten(old), _flatten(new)
  missing = object()
  out = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, missing), b.get(key, missing)
    if va != vb:
      show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
      out.append(f"{key}: {show(va)} -> {show(vb)}")
  return out


def refusal(workdir: str | os.PathLike, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
  """The one-line message refusing to reuse ``workdir`` (empty string if the configs agree)."""
  diff = differing_fields(old, new)
  if not diff:
    return ""
  named = "; ".join(diff[:_MAX_NAMED])
  more = f" (+{len(diff) - _MAX_NAMED} more)" if len(diff) > _MAX_NAMED else ""
  return (
    f"workdir={str(workdir)!r} is invalid: it holds a different run ({len(diff)} field(s) "
    f"differ: {named}{more}); use a new --workdir or the same config to resume"
  )


def check_writable(workdir: str | os.PathLike) -> pathlib.Path:
  """Checks that ``workdir`` is (or can be created as) a writable directory.

  Raises:
    ConfigError: if it is a file, or cannot be created or written.
  """
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise validation.ConfigError(
      f"workdir={str(workdir)!r} is invalid: it is a file, not a directory"
    )
  probe = path
  while not probe.exists():
    probe = probe.parent
  if not os.access(probe, os.W_OK | os.X_OK):
    raise validation.ConfigError(
      f"workdir={str(workdir)!r} is invalid: {str(probe)!r} is not writable"
    )
  return path


def check(workdir: str | os.PathLike, config: Any) -> None:
  """Refuses a workdir whose ``config.json`` holds a different run; writes nothing.

  Args:
    workdir: the run directory.
    config: the new config.

  Raises:
    ConfigError: naming the differing fields, or when the workdir is a file / not writable.
  """
  path = check_writable(workdir)
  stored = path / "config.json"
  if stored.exists():
    try:
      old = json.loads(stored.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise validation.ConfigError(
        f"workdir={str(workdir)!r} is invalid: its config.json cannot be read ({e})"
      ) from None
    message = refusal(workdir, old, config_dict(config))
    if message:
      raise validation.ConfigError(message)


def checked_extra(ckpt: Any, workdir: str | os.PathLike, config: Any) -> dict[str, Any]:
  """The newest checkpoint's JSON side-car, refused if it was written under another config.

  Args:
    ckpt: a :class:`trustml.train.checkpoint.Checkpointer` of the workdir.
    workdir: the run directory (for the message).
    config: the new config.

  Returns:
    The stored side-car (``{}`` when there is no checkpoint yet).

  Raises:
    ConfigError: naming the differing fields (the checkpointer is closed first); nothing in
      the workdir is changed.
  """
  latest = ckpt.latest_step()
  if latest is None:
    return {}
  stored = ckpt.restore_extra(latest)
  if "config" in stored:
    message = refusal(workdir, stored["config"], config_dict(config))
    if message:
      ckpt.close()
      raise validation.ConfigError(message)
  return stored


def claim(workdir: str | os.PathLike, config: Any) -> pathlib.Path:
  """:func:`check`, then writes ``config.json`` (the run contract) if it is not there.

  Args:
    workdir: the run directory (created if needed).
    config: the resolved config.

  Returns:
    The workdir path.

  Raises:
    ConfigError: as :func:`check`.
  """
  check(workdir, config)
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  if not (path / "config.json").exists():
    from trustml.train import writers

    writers.write_config(path, config)
  return path


__all__ = [
  "check",
  "checked_extra",
  "check_writable",
  "claim",
  "config_dict",
  "differing_fields",
  "fingerprint",
  "refusal",
]
