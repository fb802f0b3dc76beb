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
    _check_finished_run(_WORKDIR.value)
    out = experiment.attack_workdir(_WORKDIR.value)
  print(json.dumps(out, indent=1, default=str))
  print(logs.summary_line(out, _WORKDIR.value))


def _check_finished_run(workdir: str) -> None:
  """Rejects attacking a workdir that holds no trained run (before any compute)."""
  import pathlib  # pylint: disable=g-import-not-at-top

  from trustml.core.validation import ConfigError  # pylint: disable=g-import-not-at-top

  cli.check_workdir(workdir, must_exist=True)
  path = pathlib.Path(workdir)
  if not (path / "config.json").exists():
    raise ConfigError(
      f"workdir={workdir!r} is invalid: it holds no run (no config.json); "
      "pass --config to train one there"
    )
  if not any((path / "checkpoints").glob("[0-9]*")):
    raise ConfigError(
      f"workdir={workdir!r} is invalid: it holds no checkpoint yet; "
      "rerun its training with --config"
    )


if __name__ == "__main__":
  cli.run(main)
