"""Alias of ``trustml/configs/privacy_study.py`` so ``--config=configs/privacy_study.py[:arg]`` keeps working."""

from trustml.configs.privacy_study import *  # noqa: F403
