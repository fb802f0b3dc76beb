"""Shared absl entry point for launch scripts: one clear error line, non-zero exit.

Usage in a launch script::

  if __name__ == "__main__":
    cli.run(main)

Every bad input ends in ``error: <message>`` on stderr and exit code 1, before any compute:
a :class:`~trustml.core.validation.ConfigError` raised while the config file is parsed (bad
``:arg``) or by ``main`` (bad fields); a typo'd ``--config.section.field=`` override (with
ml_collections' "did you mean"); a ``--workdir`` that is a file or cannot be written; a config
file that cannot be loaded. Third-party log noise is filtered (:mod:`trustml.core.logs`).
"""

import os
import pathlib
import re
import sys

from absl import app, flags

from trustml.core import logs
from trustml.core.validation import ConfigError


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _unknown_field(argv: list[str], error: Exception) -> str:
  """One line for an override naming a field the config does not have."""
  text = str(error.args[0] if error.args else error)
  key_match = re.search(r"[A-Za-z_][A-Za-z0-9_]*", text)
  key = key_match.group(0) if key_match else text
  hint = re.search(r'Did you mean "([^"]+)"', text)
  for arg in argv[1:]:
    name, _, value = arg.lstrip("-").partition("=")
    parts = name.split(".")
    if len(parts) > 1 and key in parts[1:]:
      section = ".".join(parts[1 : parts.index(key, 1)]) or parts[0]
      suggestion = f" (did you mean {'.'.join([*parts[: parts.index(key, 1)], hint.group(1)])}?)"
      return f"{name}={value} is invalid: {section} has no field {key!r}" + (
        suggestion if hint else ""
      )
  return f"unknown config field {key!r}" + (f" (did you mean {hint.group(1)!r}?)" if hint else "")


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    marker = "ConfigError: "
    if marker in text:  # config_flags formats the config file's traceback into the message.
      text = text[text.rindex(marker) + len(marker) :]
    override = re.search(r"Unknown command line flag '(config\.[^']+)'", text)
    if override:  # A launcher whose --config is a plain spec string (launch.sweep).
      _fail(
        f"--{override.group(1)} is invalid: this launcher takes no --config.<field> overrides "
        "(a sweep sets fields per run in its config's get_sweep items)"
      )
    lines = [line for line in text.strip().splitlines() if line.strip()]
    _fail(lines[0] if marker in str(e) else " ".join(lines[-1:]) or str(e))
  except (AttributeError, KeyError) as e:  # An override of a field the config lacks.
    _fail(_unknown_field(argv, e))
  except ConfigError as e:
    _fail(str(e))
  return []


def check_workdir(path: str | None, *, must_exist: bool = False) -> None:
  """Rejects a ``--workdir`` that is a file, lies under a file, or cannot be written.

  Args:
    path: the flag value (``None`` or empty: nothing to check).
    must_exist: the directory must already exist (attacking a finished run).

  Raises:
    ConfigError: naming the workdir and what is wrong with it.
  """
  if not path:
    return
  p = pathlib.Path(path)
  if p.exists() and not p.is_dir():
    raise ConfigError(f"workdir={path!r} is invalid: it is a file, not a directory")
  if must_exist and not p.is_dir():
    raise ConfigError(f"workdir={path!r} is invalid: the directory does not exist")
  probe = p
  while not probe.exists():
    probe = probe.parent
  if not probe.is_dir():
    raise ConfigError(f"workdir={path!r} is invalid: {str(probe)!r} is a file, not a directory")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir={path!r} is invalid: {str(probe)!r} is not writable")


_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process runs: host:port of process 0's coordinator (else $JAX_COORDINATOR_ADDRESS).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Multi-process runs: number of processes (else $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "Multi-process runs: this process's rank (else $JAX_PROCESS_ID)."
)


def init_distributed() -> bool:
  """Starts JAX's multi-process runtime from the flags / environment (before any JAX call)."""
  from trustml.core import distributed  # noqa: PLC0415

  return distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def run(main) -> None:
  """Runs ``main`` under absl with bad input turned into one error line and exit code 1."""

  def wrapped(argv):
    logs.quiet_third_party()
    try:
      init_distributed()  # First: jax.distributed.initialize must precede any JAX computation.
      if "workdir" in flags.FLAGS:
        check_workdir(flags.FLAGS.workdir)
      main(argv)
    except ConfigError as e:
      _fail(str(e))
    except OSError as e:  # config_flags defers a missing config file until first access.
      if "config file" not in str(e):
        raise
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      _fail("config file could not be loaded: " + (lines[-1] if lines else str(e)))

  app.run(wrapped, flags_parser=_parse_flags)


__all__ = ["check_workdir", "init_distributed", "run"]
