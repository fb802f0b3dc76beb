"""Flax NLU models behind one Model contract, plus a Haiku adapter."""

from trustml.models import contract, haiku_adapter, layers, networks, registry
from trustml.models.contract import Model
from trustml.models.haiku_adapter import from_haiku, haiku_bag_classifier
from trustml.models.registry import MODEL_NAMES, build_model, default_model_config, from_flax

__all__ = [
  "MODEL_NAMES",
  "Model",
  "build_model",
  "contract",
  "default_model_config",
  "from_flax",
  "from_haiku",
  "haiku_adapter",
  "haiku_bag_classifier",
  "layers",
  "networks",
  "registry",
]
