"""Where local copies of real datasets live.

Resolution order for the data directory: the config value (``data.dir``), then the
environment variable ``TRUSTML_DATA_DIR``, then ``../shared/data`` beside the checkout when it
exists.
"""

import os
import pathlib

from trustml.core.validation import ConfigError

ENV_VAR = "TRUSTML_DATA_DIR"


def default_shared_dir() -> pathlib.Path:
  """``<checkout>/../shared/data`` (may not exist)."""
  checkout = pathlib.Path(__file__).resolve().parents[2]
  return checkout.parent / "shared" / "data"


def resolve_data_dir(configured: str | os.PathLike | None = None) -> pathlib.Path | None:
  """Returns the data directory to use, or ``None`` when none is configured or found.

  Args:
    configured: ``data.dir`` from the config; empty string or ``None`` means unset.
  """
  if configured:
    return pathlib.Path(configured).expanduser()
  env = os.environ.get(ENV_VAR)
  if env:
    return pathlib.Path(env).expanduser()
  shared = default_shared_dir()
  return shared if shared.is_dir() else None


def require_dataset_dir(
  subdir: str, configured: str | os.PathLike | None = None, field: str = "data.dir"
) -> pathlib.Path:
  """Returns ``<data dir>/<subdir>``, or raises a clear error if it is missing.

  Args:
    subdir: dataset folder inside the data directory (e.g. ``"snips_nlu_2017"``).
    configured: ``data.dir`` from the config.
    field: config field named in the error.

  Raises:
    ConfigError: if no data directory is configured/found or the folder is missing.
  """
  root = resolve_data_dir(configured)
  if root is None:
    raise ConfigError(
      f"{field} is unset and neither ${ENV_VAR} nor {default_shared_dir()} exists: "
      f"set {field} to a folder containing {subdir}/"
    )
  path = root / subdir
  if not path.is_dir():
    raise ConfigError(f"{field}={str(root)!r} is invalid: it has no {subdir}/ folder")
  return path


__all__ = ["ENV_VAR", "default_shared_dir", "require_dataset_dir", "resolve_data_dir"]
