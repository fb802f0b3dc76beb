"""Alias of ``trustml/configs/fed_lm_shakespeare.py`` so ``--config=configs/fed_lm_shakespeare.py[:arg]`` keeps working."""

from trustml.configs.fed_lm_shakespeare import *  # noqa: F403
