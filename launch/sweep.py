"""Expands a config's ``get_sweep(arg)`` into runs and collects their summaries into one table.

  python -m launch.sweep --config=configs/nlu.py:data=synthetic --sweep_arg=seeds=2 \
      --workdir=/tmp/sweep --workers=2

Each sweep item is a dict of dotted overrides (``{"train.learning_rate": 1e-3}``); the special
key ``"arg"`` is appended to the config argument for that run (later keys win) (``{"arg": "model=cnn,seed=1"}``) and
``"name"`` names the run folder. Runs go to ``<workdir>/<name>`` through ``--launcher``
(default ``launch.train``), sequentially or in N worker processes; finished runs are skipped on
re-run. Writes ``<workdir>/results.csv`` and ``results.md``.
"""

import sys

from absl import flags

from launch import cli
from trustml.train import sweep

_CONFIG = flags.DEFINE_string("config", None, "Config spec path.py[:arg].", required=True)
_SWEEP_ARG = flags.DEFINE_string("sweep_arg", "", "Argument passed to get_sweep().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.", required=True)
_WORKERS = flags.DEFINE_integer("workers", 1, "Parallel worker processes (1 = sequential).")
_LAUNCHER = flags.DEFINE_string("launcher", "launch.train", "Module run for each item.")


def main(argv: list[str]) -> None:
  del argv
  table = sweep.run_sweep(
    _CONFIG.value,
    sweep_arg=_SWEEP_ARG.value,
    workdir=_WORKDIR.value,
    workers=_WORKERS.value,
    launcher=_LAUNCHER.value,
  )
  print(sweep.to_markdown(table))
  failed = [row["name"] for row in table if row.get("status") != "ok"]
  print(
    f"done: {len(table) - len(failed)} of {len(table)} runs ok"
    + (f", failed: {', '.join(failed)} (see <run>/log.txt)" if failed else "")
    + f"; table in {_WORKDIR.value}/results.md"
  )
  if failed:
    sys.exit(2)


if __name__ == "__main__":
  cli.run(main)
