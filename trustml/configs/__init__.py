"""Experiment configs (``get_config(arg)`` / ``get_sweep(arg)``, ml_collections), shipped with trustml.

``from trustml.configs import dp_nlu; config = dp_nlu.get_config("eps=3")`` works after
``pip install``; launch scripts take the same files as ``--config=configs/dp_nlu.py:eps=3``
(``configs/`` at the checkout root holds one-line aliases). Every config parses its argument
once with :func:`trustml.core.config_args.parse_common` (``data``, ``model``, ``seed``,
``smoke`` plus its own args) and composes section builders on the one base,
:func:`trustml.configs.nlu.build` (``dp_nlu.add_privacy``, ``fed_nlu.add_federated``,
``fed_lm_shakespeare.add_language_model``, ``bias_auc_hatexplain.add_bias_auc``,
``aps.fairness_section``, ``attack.build``): base -> variant, never a re-serialised string.
``smoke`` is always an explicit arg and never overrides another arg given explicitly.
"""

import importlib

NAMES = (
  "aps",
  "association",
  "attack",
  "bias_auc_hatexplain",
  "crr_distill",
  "dp_nlu",
  "fairness_study",
  "fed_lm_shakespeare",
  "fed_nlu",
  "fed_selection",
  "nlu",
  "privacy_study",
)


def __getattr__(name: str):
  if name in NAMES:
    return importlib.import_module(f"trustml.configs.{name}")
  raise AttributeError(f"module 'trustml.configs' has no attribute {name!r}")


__all__ = list(NAMES)
