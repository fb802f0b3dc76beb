"""Alias of ``trustml/configs/fed_nlu.py`` so ``--config=configs/fed_nlu.py[:arg]`` keeps working."""

from trustml.configs.fed_nlu import *  # noqa: F403
