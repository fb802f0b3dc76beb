"""Alias of ``trustml/configs/crr_distill.py`` so ``--config=configs/crr_distill.py[:arg]`` keeps working."""

from trustml.configs.crr_distill import *  # noqa: F403
