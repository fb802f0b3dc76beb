"""One call per pillar: ``trustml.<pillar>.run(config, workdir) -> summary``, notebook-ready.

Each pillar's ``run`` is :func:`one_call` of the library function its launch script calls, so
a notebook cell and ``python -m launch.<pillar>`` do the same work. Around that function the
one call

* accepts a ConfigDict or a config spec string ``"<name>[:arg]"`` (a file of
  ``trustml/configs/``, e.g. ``"dp_nlu:smoke"``, or a path ``"configs/dp_nlu.py:smoke"``);
* makes progress visible outside ``app.run`` and filters third-party noise
  (:func:`trustml.core.logs.show_progress`);
* writes ``<workdir>/plots/`` from the run's events (:func:`trustml.core.plots.plot_run`);
* logs the one-line summary and returns the summary dict.

Example:
  >>> import trustml
  >>> summary = trustml.train.run("dp_nlu:smoke", "runs/dp_smoke")  # doctest: +SKIP
  >>> summary["privacy/epsilon"]  # doctest: +SKIP
  2.99...
"""

import importlib
import importlib.util
import os
import pathlib
from collections.abc import Callable
from typing import Any

from absl import logging

from trustml.core import logs, plots, validation


def load_config(spec: Any) -> Any:
  """A config from a ConfigDict (returned as is) or a spec string.

  Args:
    spec: a ConfigDict, ``"<name>[:arg]"`` naming a module of ``trustml.configs`` (or of the
      root ``configs`` package), or ``"path/to/file.py[:arg]"``.

  Returns:
    ``get_config(arg)`` of that module (a ConfigDict).

  Raises:
    ConfigError: if the config cannot be found (or none is given).
  """
  if spec is None:
    raise validation.ConfigError(
      "config=None is invalid: pass a config (--config=configs/<file>.py[:arg], a ConfigDict "
      "or a spec string such as 'dp_nlu:smoke')"
    )
  if not isinstance(spec, str):
    return spec
  target, _, arg = spec.partition(":")
  if target.endswith(".py"):
    path = pathlib.Path(target)
    if not path.is_file():
      raise validation.ConfigError(f"config={spec!r} is invalid: {target} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_trustml_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  else:
    module = None
    for package in ("trustml.configs", "configs"):
      try:
        module = importlib.import_module(f"{package}.{target}")
        break
      except ModuleNotFoundError as e:
        if e.name not in (package, f"{package}.{target}", package.split(".")[0]):
          raise
    if module is None:
      raise validation.ConfigError(
        f"config={spec!r} is invalid: no config named {target!r} (a file of trustml/configs/)"
      )
  return module.get_config(arg or None)


def one_call(target: str, *, pillar: str, launcher: str) -> Callable[..., dict[str, Any]]:
  """Builds a pillar's ``run(config, workdir, **kwargs) -> summary``.

  Args:
    target: ``"package.module:function"``; the function takes ``(config, workdir, **kwargs)``
      and returns the summary dict (it is imported on the first call).
    pillar: the pillar's package name (``"train"``, ``"federated"``, ...).
    launcher: the launch script that runs the same function, for the docstring.

  Returns:
    The ``run`` function.
  """
  module_name, _, function_name = target.partition(":")

  def run(
    config: Any,
    workdir: str | os.PathLike,
    *,
    progress: bool = True,
    plot: bool = True,
    **kwargs: Any,
  ) -> dict[str, Any]:
    config = load_config(config)
    if progress:
      logs.show_progress()
    else:
      logs.quiet_third_party()
    fn = getattr(importlib.import_module(module_name), function_name)
    summary = fn(config, workdir, **kwargs)
    if plot:
      plots.plot_run(workdir)
    if progress:
      logging.info("%s", logs.summary_line(summary, str(workdir)))
    return summary

  run.__name__ = run.__qualname__ = "run"
  run.__module__ = f"trustml.{pillar}"
  run.__doc__ = f"""Runs a {pillar} experiment from a config and returns its summary.

  Calls ``{module_name}.{function_name}(config, workdir, **kwargs)`` (what
  ``{launcher}`` runs) with progress shown (also in a notebook), third-party noise
  filtered, ``<workdir>/plots/`` written and a one-line summary logged.

  Args:
    config: a ConfigDict, or a spec string ``"<name>[:arg]"`` of ``trustml/configs/``.
    workdir: the run directory (the run contract; rerunning resumes).
    progress: show INFO progress lines outside ``app.run`` and log the one-line summary
      (launch scripts pass ``False`` and print it last themselves).
    plot: write loss / accuracy / ε curves into ``<workdir>/plots/``.
    **kwargs: passed to ``{function_name}``.

  Returns:
    The summary (also in ``<workdir>/summary.json``).

  Raises:
    ConfigError: for an invalid config, before any compute.
  """
  return run


__all__ = ["load_config", "one_call"]
