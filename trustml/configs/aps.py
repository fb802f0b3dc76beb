"""Accumulated prediction sensitivity (APS) vs the counterfactual gap for one classifier.

Trains a task classifier (intents of the embedded corpus by default) and a protected-status
classifier (predicting the gender of the person mentioned, ``mention_gender``) on the same
tokenizer, then reports APS, the counterfactual gap of gender-swapped texts and their
per-example correlation.

Launch:
  python -m launch.fairness --config=configs/aps.py --workdir=/tmp/aps
  python -m launch.fairness --config=configs/aps.py:model=cnn,reduction=l2 --workdir=/tmp/aps_cnn
  python -m launch.fairness --config=configs/aps.py:smoke --workdir=/tmp/aps_smoke

Args (comma-separated after ``:``):
  data: dataset of the task classifier (default synthetic).
  model: bag | cnn | transformer (task classifier).
  reduction, abs_of, normalize, class_weighting, outputs: APS modelling choices
    (trustml.fairness.sensitivity.ApsOptions; defaults l1 (Jacobian magnitude per token), jacobian, l1, predicted, probs).
  smoke: shrink everything.
  seed: root seed.
"""

import ml_collections

from trustml.configs import nlu
from trustml.core import config_args
from trustml.models import registry


def fairness_section(a: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
  """The ``fairness`` section shared by every fairness config (each field commented)."""
  fc = ml_collections.ConfigDict()
  fc.task = task  # aps | bias_auc | association | study | crr_distill.
  # Column of the dataset used as the protected attribute label of the protected-status model
  # (synthetic: 'mention_gender'; HateXplain: 'target_gender' = Women vs Men targets).
  fc.protected_label = "mention_gender"
  fc.protected_model = registry.default_model_config("bag")  # Protected-status classifier.
  fc.protected_num_epochs = 3.0  # Training epochs of the protected-status classifier.
  fc.aps = ml_collections.ConfigDict(
    {
      # Input feature of PS = w'|J|v: l1 (a token, sum_d |df/de_td|: Krishna et al.'s Jacobian
      # magnitude) | per_dimension (each embedding coordinate) | l2 | sum | grad_input.
      "reduction": a.get("reduction", "l1"),
      "abs_of": a.get("abs_of", "jacobian"),  # jacobian (w'|J|v) | score (|w'Jv|).
      "normalize": a.get("normalize", "l1"),  # l1 | max | none: normalisation of v.
      "class_weighting": a.get("class_weighting", "predicted"),  # predicted | probs | uniform.
      "outputs": a.get("outputs", "probs"),  # probs | logits: what J differentiates.
    }
  )
  fc.num_examples = 1000  # Evaluation examples used for APS and the counterfactual gap.
  fc.eval_split = ""  # Split evaluated ('' = the dataset's eval split).
  # Gender swap of her/his/him: pos (a next-token part-of-speech rule: her -> his before an
  # open-class word, else him; him -> her) | his | him (her always paired with that one).
  fc.her_counterpart = "pos"
  fc.bootstrap_samples = 1000  # Bootstrap resamples for confidence intervals.
  fc.communities = ()  # HateXplain subgroups (() = top_k most frequent majority targets).
  fc.top_k = 10  # Number of communities when computed.
  fc.threshold = 0.5  # Toxic-score threshold for parity/odds gaps and accuracy.
  # SEAT tests (seat_sent_bias/tests/<name>.jsonl); the first one gives association/effect_size.
  # Chosen for vocabulary coverage on small corpora (terms rather than first names).
  fc.seat_tests = (
    "sent-weat6b",
    "sent-weat8",
    "sent-weat3b",
    "sent-angry_black_woman_stereotype_b",
  )
  fc.ceat_test = "weat6b"  # Word-level test for CEAT: male/female terms x career/family.
  fc.ceat_samples = 200  # CEAT samples N.
  fc.ceat_contexts = 20  # Corpus contexts per word (at most).
  # CEAT vectors: token (the word's own token state in each context, Guo & Caliskan) | pooled
  # (the pooled encoding of the whole context sentence).
  fc.ceat_representation = "token"
  fc.study_models = ()  # Study only: 'arch-width-sSEED' entries.
  return fc


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the APS config for ``arg`` (see module docstring)."""
  a = config_args.parse_common(
    arg,
    reduction="l1",
    abs_of="jacobian",
    normalize="l1",
    class_weighting="predicted",
    outputs="probs",
  )
  config = nlu.build(a)
  config.fairness = fairness_section(a, "aps")
  if a.data == "hatexplain":  # Protected attribute: the targeted gender (Women vs Men).
    config.data.use_tfds_builder = False
    config.fairness.protected_label = "target_gender"
  if a.smoke:
    config.train.num_steps = 30
    config.fairness.protected_num_epochs = 0.2
    config.fairness.num_examples = 64
    config.fairness.bootstrap_samples = 50
    config.fairness.protected_model.embed_dim = 16
    config.fairness.protected_model.hidden_dim = 16
  return config
