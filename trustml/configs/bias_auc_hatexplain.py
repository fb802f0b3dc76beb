"""HateXplain bias AUCs (subgroup, BPSN, BNSP and their p=-5 generalized means).

Trains a 3-class classifier (hatespeech / normal / offensive) on the HateXplain training split
and evaluates toxic = hatespeech ∪ offensive on the official test split with the HateXplain
protocol (majority targets, top-10 communities, posts without a majority target excluded).

Launch:
  python -m launch.fairness --config=configs/bias_auc_hatexplain.py --workdir=/tmp/bias_auc
  python -m launch.fairness --config=configs/bias_auc_hatexplain.py:model=cnn --workdir=/tmp/ba_cnn
  python -m launch.fairness --config=configs/bias_auc_hatexplain.py:smoke --workdir=/tmp/ba_smoke

Args: model (bag | cnn | transformer), epochs, width (embed_dim; 0 = model default), layers
(transformer depth; 0 = default), smoke, seed.
"""

import ml_collections

from trustml.configs import aps, nlu
from trustml.core import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the HateXplain bias-AUC config for ``arg``."""
  a = config_args.parse_common(arg, **BIAS_AUC_ARGS)
  return add_bias_auc(nlu.build(a), a)


BIAS_AUC_ARGS = dict(data="hatexplain", epochs=4.0, width=0, layers=0)


def add_bias_auc(config: ml_collections.ConfigDict, a: ml_collections.ConfigDict):
  """HateXplain training settings and the ``fairness`` section of the bias-AUC task.

  Args:
    config: a config from :func:`trustml.configs.nlu.build` with ``data=hatexplain``.
    a: parsed args with :data:`BIAS_AUC_ARGS`.

  Returns:
    ``config`` (changed in place).
  """
  config.data.use_tfds_builder = False  # Parse the local copy directly (no TFDS build step).
  config.train.num_epochs = config_args.smoke_value(a, "epochs", 0.0)  # Passes over 15,383 posts.
  config.train.eval_batch_size = 512  # Evaluation batch size.
  if a.width:  # Token-embedding width (and MLP width 2x / CNN filters) instead of the default.
    config.model.embed_dim = a.width
    for key, value in (
      ("hidden_dim", 2 * a.width),
      ("mlp_dim", 2 * a.width),
      ("num_filters", a.width),
    ):
      if key in config.model:
        config.model[key] = value
  if a.layers and "num_layers" in config.model:  # Transformer depth instead of the default.
    config.model.num_layers = a.layers
  config.fairness = aps.fairness_section(a, "bias_auc")
  config.fairness.protected_label = "target_gender"  # Women vs Men targets (APS in the study).
  if a.smoke:
    config.train.num_steps = 30
    config.fairness.bootstrap_samples = 20
    config.fairness.num_examples = 64
  return config
