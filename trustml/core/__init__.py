"""Core types, RNG streams and validation shared by every pillar."""

from trustml.core import devices, rng, types, validation
from trustml.core.rng import RngStreams
from trustml.core.types import Batch, Params, PRNGKey
from trustml.core.validation import ConfigError

__all__ = [
  "Batch",
  "ConfigError",
  "PRNGKey",
  "Params",
  "RngStreams",
  "devices",
  "rng",
  "types",
  "validation",
]
