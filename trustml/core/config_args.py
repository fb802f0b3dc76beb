"""Parsing of config arguments in the big_vision style.

``configs/nlu.py:data=snips,model=transformer,smoke`` reaches ``get_config`` as the string
``"data=snips,model=transformer,smoke"``. :func:`parse_arg` turns it into a ConfigDict of typed
fields with defaults; a bare word (``smoke``) sets a boolean flag to True. Unknown keys are an
error naming the allowed keys.
"""

from typing import Any

import ml_collections

from trustml.core.validation import ConfigError


def _convert(key: str, raw: str, default: Any) -> Any:
  if isinstance(default, bool):
    if raw.lower() in ("1", "true", "yes", ""):
      return True
    if raw.lower() in ("0", "false", "no"):
      return False
    raise ConfigError(f"config arg {key}={raw!r} is invalid: must be a boolean")
  if isinstance(default, int):
    try:
      return int(raw)
    except ValueError:
      raise ConfigError(f"config arg {key}={raw!r} is invalid: must be an integer") from None
  if isinstance(default, float):
    if raw.lower() in ("inf", "infinity"):
      return float("inf")
    try:
      return float(raw)
    except ValueError:
      raise ConfigError(f"config arg {key}={raw!r} is invalid: must be a number") from None
  return raw


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``"k1=v1,k2=v2,flag"`` into a ConfigDict typed by ``defaults``.

  Args:
    arg: the string after ``:`` in ``--config=path.py:arg`` (or ``None``).
    **defaults: allowed keys and their default values (the type of the default is the type of
      the field).

  Returns:
    A ConfigDict with every key of ``defaults``.

  Raises:
    ConfigError: on an unknown key or a value of the wrong type.

  Example:
    >>> parse_arg("data=snips,smoke", data="synthetic", smoke=False).smoke
    True
  """
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  for part in arg.split(","):
    part = part.strip()
    if not part:
      continue
    key, sep, raw = part.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(
        f"config arg {key!r} is not a known field: allowed fields are {', '.join(sorted(defaults))}"
      )
    if not sep:
      if not isinstance(defaults[key], bool):
        raise ConfigError(f"config arg {key!r} needs a value: write {key}=...")
      out[key] = True
    else:
      out[key] = _convert(key, raw.strip(), defaults[key])
  return out


COMMON = dict(data="synthetic", model="bag", seed=0, smoke=False)
"""The args every experiment config takes: dataset, network, root seed, smoke mode."""


def parse_common(arg: str | None, **fields: Any) -> ml_collections.ConfigDict:
  """Parses a config argument: the :data:`COMMON` args plus a config's own ``fields``.

  The one parser of every ``trustml/configs`` file: a config parses its whole argument once
  and passes the parsed fields (never a re-serialised string) to the section builders it
  composes. ``fields`` may also override a common default (``data="hatexplain"``). The
  result's ``given`` holds the keys written explicitly, so ``smoke`` shrinks only the others
  (:func:`smoke_value`).

  Args:
    arg: the string after ``:`` in ``--config=path.py:arg`` (or ``None``).
    **fields: the config's own args and their defaults.

  Returns:
    A ConfigDict with the common fields, ``fields`` and ``given`` (a sorted tuple).

  Raises:
    ConfigError: on an unknown key or a value of the wrong type.

  Example:
    >>> a = parse_common("smoke,clients=1000", clients=100)
    >>> (a.data, a.smoke, a.clients, a.given)
    ('synthetic', True, 1000, ('clients', 'smoke'))
  """
  out = parse_arg(arg, **{**COMMON, **fields})
  out.given = tuple(sorted(given(arg)))
  return out


def given(arg: str | None) -> frozenset[str]:
  """The keys written explicitly in a config argument (``"clients=1000,smoke"`` -> both).

  A ``smoke`` variant shrinks only what the user did not set:
  ``fed_nlu.py:partition=iid,clients=1000,smoke`` keeps 1000 clients.

  Args:
    arg: the string after ``:`` in ``--config=path.py:arg`` (or ``None``).

  Returns:
    The keys, without values.

  Example:
    >>> sorted(given("data=snips,smoke"))
    ['data', 'smoke']
  """
  return frozenset(
    part.partition("=")[0].strip() for part in (arg or "").split(",") if part.strip()
  )


def smoke_requested(arg: str | None) -> bool:
  """Whether a config argument turns smoke mode on, read before the full parse.

  For a config whose *defaults* differ under smoke (a smoke study defaults to the embedded
  corpus), so it can pick them before :func:`parse_common`. ``smoke``, ``smoke=1`` and
  ``smoke=true`` turn it on; ``smoke=false`` (which ``"smoke" in given(arg)`` would take for
  on) and a missing ``smoke`` do not.

  Args:
    arg: the string after ``:`` in ``--config=path.py:arg`` (or ``None``).

  Returns:
    The value of ``smoke``.

  Raises:
    ConfigError: if ``smoke`` has a value that is not a boolean.

  Example:
    >>> (smoke_requested("data=snips,smoke"), smoke_requested("smoke=false"))
    (True, False)
  """
  parts = [p for p in (arg or "").split(",") if p.partition("=")[0].strip() == "smoke"]
  return bool(parse_arg(",".join(parts), smoke=False).smoke)


def smoke_value(args: Any, key: str, small: Any) -> Any:
  """``small`` under ``smoke`` unless ``key`` was given explicitly, else ``args[key]``.

  Args:
    args: the parsed arguments (:func:`parse_common`: ``smoke`` and ``given``).
    key: the argument.
    small: its smoke-size value.

  Returns:
    The value to use.
  """
  if args.smoke and key not in args.given:
    return small
  return args[key]


__all__ = ["COMMON", "given", "parse_arg", "parse_common", "smoke_requested", "smoke_value"]
