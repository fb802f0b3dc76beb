"""Alias of ``trustml/configs/attack.py`` so ``--config=configs/attack.py[:arg]`` keeps working."""

from trustml.configs.attack import *  # noqa: F403
