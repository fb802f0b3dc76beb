"""Alias of ``trustml/configs/dp_nlu.py`` so ``--config=configs/dp_nlu.py[:arg]`` keeps working."""

from trustml.configs.dp_nlu import *  # noqa: F403
