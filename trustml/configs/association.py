"""Intrinsic association tests (SEAT on pooled encodings, CEAT with corpus contexts).

Trains a classifier (HateXplain by default) and runs the SEAT tests of May et al. (2019) on its
pooled sentence encodings, plus CEAT (Guo & Caliskan 2021) with contexts from the training text.

Launch:
  python -m launch.fairness --config=configs/association.py --workdir=/tmp/assoc
  python -m launch.fairness --config=configs/association.py:data=synthetic --workdir=/tmp/assoc_syn
  python -m launch.fairness --config=configs/association.py:smoke --workdir=/tmp/assoc_smoke

Args: data (hatexplain | synthetic | ...), model, smoke, seed.
"""

import ml_collections

from trustml.configs import aps, bias_auc_hatexplain, nlu
from trustml.core import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the association-test config for ``arg``."""
  a = config_args.parse_common(arg, **bias_auc_hatexplain.BIAS_AUC_ARGS)
  config = nlu.build(a)
  if a.data == "hatexplain":
    bias_auc_hatexplain.add_bias_auc(config, a)
  else:
    config.fairness = aps.fairness_section(a, "association")
  config.fairness.task = "association"
  if a.smoke:
    config.fairness.seat_tests = ("sent-weat6b",)  # One SEAT test.
    config.fairness.ceat_samples = 10
    config.fairness.ceat_contexts = 3
  return config
