"""The curated public names of trustml.fairness."""

import trustml.fairness as fairness

EXPECTED = {
  "ApsOptions",
  "accumulated_prediction_sensitivity",
  "association",
  "bias_aucs",
  "bootstrap_ci",
  "ceat",
  "counterfactual",
  "counterfactual_gap",
  "crr",
  "crr_report",
  "distill",
  "distill_loop",
  "experiment",
  "gmb",
  "generation",
  "group_metrics",
  "lm_corpus",
  "load_gender_pairs",
  "per_group_table",
  "random_effects",
  "run",
  "seat",
  "sensitivity",
  "study",
  "swap_text",
  "swap_token_ids",
  "weat",
}


def test_public_names():
  assert set(fairness.__all__) == EXPECTED
  for name in fairness.__all__:
    assert getattr(fairness, name) is not None


def test_module_all_lists_resolve():
  for mod in (
    fairness.association,
    fairness.counterfactual,
    fairness.group_metrics,
    fairness.sensitivity,
    fairness.experiment,
    fairness.distill,
    fairness.crr,
    fairness.crr_report,
    fairness.distill_loop,
    fairness.lm_corpus,
    fairness.study,
  ):
    for name in mod.__all__:
      assert hasattr(mod, name), (mod.__name__, name)
