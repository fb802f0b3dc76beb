"""Fairness runs: APS, HateXplain bias AUCs, association tests, the study, CRR distillation.

  python -m launch.fairness --config=configs/aps.py --workdir=/tmp/aps
  python -m launch.fairness --config=configs/bias_auc_hatexplain.py --workdir=/tmp/bias_auc
  python -m launch.fairness --config=configs/association.py --workdir=/tmp/assoc
  python -m launch.fairness --config=configs/fairness_study.py --workdir=/tmp/study
  python -m launch.fairness --config=configs/crr_distill.py --workdir=/tmp/crr

Dispatches on ``config.fairness.task`` (aps | bias_auc | association | study | crr_distill) to
``trustml.fairness.experiment.run``. Writes config.json, metrics.jsonl, summary.json and plots/
to --workdir; rerunning resumes training from the checkpoints under --workdir. An invalid config
prints one ``error: ...`` line and exits 1 before any compute.
"""

import json

from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


def main(argv: list[str]) -> None:
  del argv
  import trustml.fairness  # noqa: PLC0415  (keeps --help fast)
  from trustml.core import logs  # noqa: PLC0415

  summary = trustml.fairness.run(_CONFIG.value, _WORKDIR.value, progress=False, plot=False)
  print(json.dumps({k: v for k, v in summary.items() if "/" in k}, indent=1, default=str))
  print(logs.summary_line(summary, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
