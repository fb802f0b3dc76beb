"""Thin aliases: the configs ship inside the package as ``trustml.configs``.

``--config=configs/<name>.py[:arg]`` command lines (config_flags loads a file) and
``from configs import <name>`` keep working; edit the files under ``trustml/configs/``.
"""
