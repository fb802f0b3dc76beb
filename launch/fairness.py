"""Fairness runs: APS, HateXplain bias AUCs, association tests, the study, CRR distillation.

  python -m launch.fairness --config=configs/aps.py --workdir=/tmp/aps
  python -m launch.fairness --config=configs/bias_auc_hatexplain.py --workdir=/tmp/bias_auc
  python -m launch.fairness --config=configs/association.py --workdir=/tmp/assoc
  python -m launch.fairness --config=configs/fairness_study.py --workdir=/tmp/study
  python -m launch.fairness --config=configs/crr_distill.py --workdir=/tmp/crr

Dispatches on ``config.fairness.task`` (aps | bias_auc | association | study | crr_distill).
Writes config.json, metrics.jsonl, summary.json and plots/ to --workdir; rerunning resumes
training from the checkpoints under --workdir.
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
  from trustml.fairness import experiment  # noqa: PLC0415

  try:
    summary = experiment.run(_CONFIG.value, _WORKDIR.value)
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
