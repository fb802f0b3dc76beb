"""Alias of ``trustml/configs/association.py`` so ``--config=configs/association.py[:arg]`` keeps working."""

from trustml.configs.association import *  # noqa: F403
