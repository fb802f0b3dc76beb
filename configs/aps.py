"""Alias of ``trustml/configs/aps.py`` so ``--config=configs/aps.py[:arg]`` keeps working."""

from trustml.configs.aps import *  # noqa: F403
