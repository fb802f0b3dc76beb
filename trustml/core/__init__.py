"""Core types, RNG streams, validation, logs, plots and the one-call entry shared by every pillar."""

from trustml.core import config_args, devices, entry, logs, plots, rng, types, validation
from trustml.core.rng import RngStreams
from trustml.core.types import Batch, Params, PRNGKey
from trustml.core.validation import ConfigError

__all__ = [
  "Batch",
  "ConfigError",
  "PRNGKey",
  "Params",
  "RngStreams",
  "config_args",
  "devices",
  "entry",
  "logs",
  "plots",
  "rng",
  "types",
  "validation",
]
