"""Runs a federated experiment (static or continual FL, optional user-level DP) from a config.

  python -m launch.federated --config=configs/fed_nlu.py:data=snips,alpha=0.1 --workdir=/tmp/fed
  python -m launch.federated --config=configs/fed_selection.py:sampler=activity,setting=continual \
      --workdir=/tmp/sel
  python -m launch.federated --config=configs/fed_lm_shakespeare.py --workdir=/tmp/shakes

Re-running the same command on the same workdir resumes from the last checkpoint.
Writes config.json, metrics.jsonl, summary.json, checkpoints/ and plots/ to --workdir.
"""

import json

from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


def main(argv: list[str]) -> None:
  del argv
  import trustml.federated  # pylint: disable=g-import-not-at-top
  from trustml.core import logs  # pylint: disable=g-import-not-at-top

  summary = trustml.federated.run(_CONFIG.value, _WORKDIR.value, progress=False)
  print(
    json.dumps(
      {k: v for k, v in summary.items() if "/" in k and k != "fed/eval_curve"},
      indent=1,
      default=str,
    )
  )
  print(logs.summary_line(summary, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
