"""Intrinsic (SEAT/CEAT) vs extrinsic (HateXplain bias AUCs, counterfactual gap, APS) study.

Trains K models on HateXplain (architectures bag/cnn/transformer, widths, seeds) sharing one
tokenizer and one protected-status model; scores each intrinsically and extrinsically and
reports Pearson and Spearman correlations across models (``study_table.md`` in the workdir).

Launch:
  python -m launch.fairness --config=configs/fairness_study.py --workdir=/tmp/fairness_study
  python -m launch.fairness --config=configs/fairness_study.py:smoke --workdir=/tmp/study_smoke

Args: epochs (per model), smoke, seed.
"""

import ml_collections

from trustml.configs import bias_auc_hatexplain, nlu
from trustml.core import config_args

MODELS = (
  "bag-16-s0",
  "bag-32-s1",
  "bag-64-s2",
  "cnn-16-s0",
  "cnn-32-s1",
  "cnn-64-s2",
  "transformer-16-s0",
  "transformer-32-s1",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the study config for ``arg``."""
  a = config_args.parse_common(arg, **{**bias_auc_hatexplain.BIAS_AUC_ARGS, "epochs": 2.0})
  config = bias_auc_hatexplain.add_bias_auc(nlu.build(a), a)
  config.fairness.task = "study"
  config.fairness.study_models = MODELS  # K = 8 models: 'arch-width-sSEED'.
  config.text.max_len = 48  # Shorter sequences keep the study at ~10 CPU minutes.
  config.train.batch_size = 128  # Larger batches, fewer steps.
  config.train.learning_rate = 3e-3  # Peak learning rate for all study models.
  config.fairness.num_examples = 1924  # The whole test split for APS / gap.
  config.fairness.bootstrap_samples = 200  # CIs are not the point of the study.
  config.fairness.ceat_samples = 100  # CEAT samples per model.
  config.fairness.ceat_contexts = 10  # Contexts per word.
  config.fairness.protected_num_epochs = 2.0  # Protected-status model (targeted gender).
  if a.smoke:
    config.fairness.study_models = ("bag-8-s0", "cnn-8-s1", "transformer-8-s2")
    config.fairness.seat_tests = ("sent-weat6b",)
    config.fairness.ceat_samples = 5
    config.fairness.ceat_contexts = 2
    config.fairness.num_examples = 64
  return config
