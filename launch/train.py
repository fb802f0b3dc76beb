"""Trains a model from a config: non-private, or DP-SGD / eDP-SGD when ``privacy.mechanism`` is set.

  python -m launch.train --config=configs/nlu.py:data=snips,model=transformer --workdir=/tmp/snips

Re-running the same command on the same workdir resumes from the last checkpoint.
Writes config.json, metrics.jsonl, summary.json and checkpoints/ to --workdir.
"""

import json

from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


def main(argv: list[str]) -> None:
  del argv
  from trustml.core import logs

  config = _CONFIG.value
  if config.privacy.mechanism != "none":
    from trustml.privacy import training

    summary = training.run(config, _WORKDIR.value)
  else:
    from trustml.train import loop

    summary = loop.train(config, _WORKDIR.value)
  print(json.dumps(summary, indent=1, default=str))
  print(logs.summary_line(summary, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
