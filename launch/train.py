"""Trains a model from a config: non-private, or DP-SGD / eDP-SGD when ``privacy.mechanism`` is set.

  python -m launch.train --config=configs/nlu.py:data=snips,model=transformer --workdir=/tmp/snips

Re-running the same command on the same workdir resumes from the last checkpoint.
Writes config.json, metrics.jsonl, summary.json and checkpoints/ to --workdir.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from trustml.core.validation import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


def main(argv: list[str]) -> None:
  del argv
  config = _CONFIG.value
  try:
    if config.privacy.mechanism != "none":
      from trustml.privacy import training

      summary = training.run(config, _WORKDIR.value)
    else:
      from trustml.train import loop

      summary = loop.train(config, _WORKDIR.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  logging.info("summary: %s", summary)
  print(json.dumps({k: v for k, v in summary.items() if "/" in k}, indent=1, default=str))


def _entry() -> None:
  try:
    app.run(main)
  except ConfigError as e:  # Raised while the config file itself is loaded.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  _entry()
