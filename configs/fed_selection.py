"""Alias of ``trustml/configs/fed_selection.py`` so ``--config=configs/fed_selection.py[:arg]`` keeps working."""

from trustml.configs.fed_selection import *  # noqa: F403
