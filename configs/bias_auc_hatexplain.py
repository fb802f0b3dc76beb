"""Alias of ``trustml/configs/bias_auc_hatexplain.py`` so ``--config=configs/bias_auc_hatexplain.py[:arg]`` keeps working."""

from trustml.configs.bias_auc_hatexplain import *  # noqa: F403
