"""Sweeps: expand ``get_sweep(arg)`` of a config file into runs, run them, collect a table.

A sweep item is a dict of dotted config overrides, plus optional ``"arg"`` (the config argument
of that run) and ``"name"`` (its folder). Every item's config is built and validated before
any run starts, so a typo fails the sweep at once.
"""

import concurrent.futures
import csv
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from trustml.core import logs, validation


def load_config_module(path: str | os.PathLike):
  """Imports a config file by path (as ml_collections' config_flags does)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise validation.ConfigError(f"config={str(path)!r} is invalid: file does not exist")
  spec = importlib.util.spec_from_file_location(f"_sweep_cfg_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
  """Sets dotted fields of a ConfigDict, rejecting unknown ones.

  Raises:
    ConfigError: naming an unknown field.
  """
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      if p not in node:
        raise validation.ConfigError(f"sweep override {dotted!r}: unknown field {p!r}")
      node = node[p]
    if leaf not in node:
      raise validation.ConfigError(f"sweep override {dotted!r}: unknown field {leaf!r}")
    node[leaf] = value
  return config


def _slug(item: Mapping[str, Any]) -> str:
  parts = [f"{k.split('.')[-1]}={v}" for k, v in item.items() if k != "name"]
  return re.sub(r"[^A-Za-z0-9_.=-]+", "_", ",".join(parts))[:120] or "run"


def _flag_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def expand(spec: str, sweep_arg: str = "") -> list[dict[str, Any]]:
  """Expands a sweep into validated run descriptions.

  Args:
    spec: ``path.py[:arg]``.
    sweep_arg: argument of ``get_sweep``.

  Returns:
    One dict per run: ``name``, ``path``, ``arg``, ``overrides``.

  Raises:
    ConfigError: if the file has no ``get_sweep`` or an item is invalid.
  """
  path, _, base_arg = spec.partition(":")
  module = load_config_module(path)
  if not hasattr(module, "get_sweep"):
    raise validation.ConfigError(f"config={path!r} is invalid: it defines no get_sweep(arg)")
  runs = []
  names = set()
  for item in module.get_sweep(sweep_arg or None):
    item = dict(item)
    name = str(item.pop("name", "") or _slug(item))
    arg = ",".join(a for a in (base_arg, item.pop("arg", "")) if a)  # Item args win.
    apply_overrides(module.get_config(arg or None), item)  # Validates names before compute.
    if name in names:
      raise validation.ConfigError(f"sweep item name {name!r} is not unique")
    names.add(name)
    runs.append({"name": name, "path": path, "arg": arg, "overrides": item})
  return runs


def _last_error(log_path: pathlib.Path) -> str:
  """The run's ``error:`` line, else the last line of its log."""
  try:
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
  except OSError:
    return ""
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or [""])[-1][:300]


def _run_one(
  run: Mapping[str, Any], workdir: pathlib.Path, launcher: str, index: int, count: int
) -> dict[str, Any]:
  out = workdir / run["name"]
  tag = f"[{index}/{count}] {run['name']}"
  row: dict[str, Any] = {"name": run["name"], "arg": run["arg"]}
  row.update({k: v for k, v in run["overrides"].items()})
  if (out / "summary.json").exists():
    logging.info("%s: finished earlier, skipped (%s)", tag, out)
  else:
    out.mkdir(parents=True, exist_ok=True)
    spec = run["path"] + (f":{run['arg']}" if run["arg"] else "")
    cmd = [sys.executable, "-m", launcher, f"--config={spec}", f"--workdir={out}"]
    cmd += [f"--config.{k}={_flag_value(v)}" for k, v in run["overrides"].items()]
    logging.info("%s: started (log: %s)", tag, out / "log.txt")
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as log:
      proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (out / "summary.json").exists():
      row["status"] = f"failed (exit {proc.returncode}, see {out / 'log.txt'})"
      logging.warning(
        "%s: FAILED after %.0f s (exit %d): %s",
        tag,
        wall,
        proc.returncode,
        _last_error(out / "log.txt"),
      )
      return row
    logging.info("%s: finished in %.0f s", tag, wall)
  row["status"] = "ok"
  summary = json.loads((out / "summary.json").read_text())
  logging.info("%s: %s", tag, logs.summary_line(summary))
  row.update(summary)
  return row


def run_sweep(
  spec: str,
  *,
  sweep_arg: str = "",
  workdir: str | os.PathLike,
  workers: int = 1,
  launcher: str = "launch.train",
) -> list[dict[str, Any]]:
  """Runs every item of a sweep and writes ``results.csv`` and ``results.md``.

  Args:
    spec: ``path.py[:arg]`` of a config file defining ``get_config`` and ``get_sweep``.
    sweep_arg: argument of ``get_sweep``.
    workdir: the sweep directory.
    workers: parallel worker processes.
    launcher: the ``python -m`` module run for each item.

  Returns:
    One row per run (its overrides, status and summary).
  """
  validation.positive_int("workers", workers)
  runs = expand(spec, sweep_arg)
  root = pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  done = sum((root / r["name"] / "summary.json").exists() for r in runs)
  logging.info(
    "sweep: %d runs (%d finished earlier) with %s, %d at a time, into %s; "
    "each run's output is in %s/<name>/log.txt",
    len(runs),
    done,
    launcher,
    workers,
    root,
    root,
  )
  count = len(runs)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    table = list(
      pool.map(lambda ir: _run_one(ir[1], root, launcher, ir[0] + 1, count), enumerate(runs))
    )
  write_table(table, root)
  return table


def _columns(table: Sequence[Mapping[str, Any]]) -> list[str]:
  cols: list[str] = []
  for row in table:
    for k in row:
      if k not in cols:
        cols.append(k)
  return cols


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return "" if v is None else str(v)


def to_markdown(table: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
  """Renders rows as a markdown table."""
  cols = list(columns or _columns(table))
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in table]
  return "\n".join(lines)


def write_table(table: Sequence[Mapping[str, Any]], workdir: str | os.PathLike) -> None:
  """Writes ``results.csv`` and ``results.md`` into ``workdir``."""
  root = pathlib.Path(workdir)
  cols = _columns(table)
  with open(root / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    for row in table:
      w.writerow({c: row.get(c, "") for c in cols})
  (root / "results.md").write_text(to_markdown(table, cols) + "\n")


__all__ = [
  "apply_overrides",
  "expand",
  "load_config_module",
  "run_sweep",
  "to_markdown",
  "write_table",
]
