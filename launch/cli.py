"""Shared absl entry point for launch scripts: one clear error line, non-zero exit.

Usage in a launch script::

  if __name__ == "__main__":
    cli.run(main)

A :class:`~trustml.core.validation.ConfigError` raised while the config file is parsed (bad
``:arg``) or by ``main`` (bad fields) prints ``error: <message>`` to stderr and exits 1, before
any compute.
"""

import sys

from absl import app, flags, logging

from trustml.core.validation import ConfigError


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    marker = "ConfigError: "
    if marker in text:  # config_flags formats the config file's traceback into the message.
      text = text[text.rindex(marker) + len(marker) :]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    _fail(lines[0] if marker in str(e) else " ".join(lines[-1:]) or str(e))
  return []


def run(main) -> None:
  """Runs ``main`` under absl with config errors turned into one line and exit code 1."""

  def wrapped(argv):
    logging.get_absl_handler().addFilter(lambda r: "orbax" not in r.pathname)  # Quieter logs.
    try:
      main(argv)
    except ConfigError as e:
      _fail(str(e))
    except OSError as e:  # config_flags defers a missing config file until first access.
      if "config file" not in str(e):
        raise
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      _fail("config file could not be loaded: " + (lines[-1] if lines else str(e)))

  app.run(wrapped, flags_parser=_parse_flags)
