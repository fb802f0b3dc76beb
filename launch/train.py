"""Trains a model from a config: non-private, or DP-SGD / eDP-SGD when ``privacy.mechanism`` is set.

  python -m launch.train --config=configs/nlu.py:data=snips,model=transformer --workdir=/tmp/snips

Re-running the same command on the same workdir resumes from the last checkpoint.
Writes config.json, metrics.jsonl, summary.json, checkpoints/, TensorBoard events (tb/) and
plots/ (loss, accuracy and, for DP runs, ε vs step) to --workdir. Watch it live with
``tensorboard --logdir=<workdir>``. Same as ``trustml.train.run(config, workdir)`` in Python.
"""

import json

from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


def main(argv: list[str]) -> None:
  del argv
  import trustml.train
  from trustml.core import logs

  summary = trustml.train.run(_CONFIG.value, _WORKDIR.value, progress=False)
  print(json.dumps(summary, indent=1, default=str))
  print(logs.summary_line(summary, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
