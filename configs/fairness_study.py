"""Alias of ``trustml/configs/fairness_study.py`` so ``--config=configs/fairness_study.py[:arg]`` keeps working."""

from trustml.configs.fairness_study import *  # noqa: F403
