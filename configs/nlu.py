"""Alias of ``trustml/configs/nlu.py`` so ``--config=configs/nlu.py[:arg]`` keeps working."""

from trustml.configs.nlu import *  # noqa: F403
