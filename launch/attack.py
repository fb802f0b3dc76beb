"""Attacks a model: train-then-attack from a config, attack a trained workdir, or summarise a study.

  python -m launch.attack --config=configs/attack.py:data=snips,eps=1 --workdir=/tmp/a_eps1
  python -m launch.attack --workdir=/tmp/a_eps1            # attack the finished run in workdir
  python -m launch.attack --summarize=/tmp/privacy_study   # correlations + plot of a sweep

Writes to --workdir: config.json, metrics.jsonl, checkpoints/, plots/roc.png and summary.json
with ``mia/auc``, ``mia/tpr_at_0.001_fpr``, ``mia/tpr_at_0.01_fpr``,
``audit/epsilon_lower_bound``, ``canary/exposure_mean``, ``canary/extraction_exact_match``,
``canary/extraction_token_accuracy`` (see docs/attacks.md). Re-running resumes training.
"""

import json

from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_SUMMARIZE = flags.DEFINE_string("summarize", None, "Sweep directory with results.csv.")


def main(argv: list[str]) -> None:
  del argv
  from trustml.attacks import experiment, study  # pylint: disable=g-import-not-at-top
  from trustml.core import logs  # pylint: disable=g-import-not-at-top
  from trustml.core.validation import ConfigError  # pylint: disable=g-import-not-at-top

  if _SUMMARIZE.value:
    out = study.summarize_dir(_SUMMARIZE.value)
    print(json.dumps(out, indent=1, default=str))
    print(f"done: study of {out['num_rows']} ε-sweep runs; table in {_SUMMARIZE.value}/study.md")
    return
  if not _WORKDIR.value:
    raise ConfigError("workdir=None is invalid: pass --workdir (or --summarize)")
  if _CONFIG.value is not None:
    import trustml.attacks  # pylint: disable=g-import-not-at-top

    out = trustml.attacks.run(_CONFIG.value, _WORKDIR.value, progress=False)
  else:
    cli.check_workdir(_WORKDIR.value, must_exist=True)
    out = experiment.attack_workdir(_WORKDIR.value)  # Checks it holds a finished attack run.
  print(json.dumps(out, indent=1, default=str))
  print(logs.summary_line(out, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
