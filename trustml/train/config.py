"""Defaults and validation of the ``train`` and ``text`` config sections.

``train`` fields:
  batch_size: examples per step (physical batch).
  num_steps: optimizer steps, used when ``num_epochs`` is 0 (0 = unset).
  num_epochs: if > 0, steps = ceil(num_epochs * num_train_examples / batch_size). One of the
    two must be > 0: ``num_epochs=0`` with ``num_steps`` unset is rejected, never a hidden
    default step count.
  optimizer: ``adam`` | ``adamw`` | ``sgd`` | ``momentum``.
  learning_rate: peak learning rate.
  weight_decay: decoupled weight decay (``adamw``).
  schedule: ``constant`` | ``cosine`` (after linear warm-up).
  warmup_steps: linear warm-up steps.
  eval_every / log_every / checkpoint_every: intervals in steps (0 disables periodic eval).
  eval_batch_size: evaluation batch size.
  max_to_keep: checkpoints kept.

``mesh`` fields (optional section; missing fields take :data:`MESH_FIELDS`):
  num_devices: global devices the trainers use (0 = all devices of all processes).
  model: size of the mesh's ``model`` axis (1 = pure data parallelism).
  fsdp: split large parameters and optimizer moments over ``data`` instead of replicating.
  The ``data`` axis size (:func:`num_data_shards`) = num_devices / model; a step's batch rows
  are split over it, so they must be a multiple of it.

``text`` fields:
  kind: ``word`` | ``char`` tokenizer.
  vocab_size: vocabulary cap including 4 specials.
  min_count: minimum word count for the vocabulary.
  max_len: static sequence length.
  lowercase: lower-case text before tokenizing.
"""

from collections.abc import Mapping
from typing import Any

import ml_collections
import optax

from trustml.core import validation

TRAIN_FIELDS = dict(
  batch_size=64,
  num_steps=0,
  num_epochs=0.0,
  optimizer="adam",
  learning_rate=1e-3,
  weight_decay=0.0,
  schedule="constant",
  warmup_steps=0,
  eval_every=0,
  log_every=50,
  checkpoint_every=200,
  eval_batch_size=256,
  max_to_keep=2,
)
MESH_FIELDS = dict(num_devices=0, model=1, fsdp=False)
TEXT_FIELDS = dict(kind="word", vocab_size=8000, min_count=1, max_len=32, lowercase=True)
OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
SCHEDULES = ("constant", "cosine")


def default_train_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``train`` section with defaults (see module docstring)."""
  cfg = ml_collections.ConfigDict(dict(TRAIN_FIELDS))
  cfg.update(overrides)
  return cfg


def default_text_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``text`` section with defaults (see module docstring)."""
  cfg = ml_collections.ConfigDict(dict(TEXT_FIELDS))
  cfg.update(overrides)
  return cfg


def default_mesh_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``mesh`` section with defaults (see module docstring)."""
  cfg = ml_collections.ConfigDict(dict(MESH_FIELDS))
  cfg.update(overrides)
  return cfg


def mesh_fields(config: Any) -> dict[str, Any]:
  """The ``mesh`` section of a full config (defaults where it or a field is missing)."""
  out = dict(MESH_FIELDS)
  section = config.get("mesh", None) if hasattr(config, "get") else None
  if section is not None:
    out.update(dict(section))
  return out


def validate_mesh(cfg: Mapping[str, Any]) -> None:
  """Validates the ``mesh`` section (device counts against the visible devices too).

  Raises:
    ConfigError: naming the field and the allowed range.
  """
  validation.known_fields("mesh", cfg.keys(), MESH_FIELDS)
  fields = dict(MESH_FIELDS, **dict(cfg))
  n = validation.non_negative_int("mesh.num_devices", fields["num_devices"])
  model = validation.positive_int("mesh.model", fields["model"])
  if not isinstance(fields["fsdp"], bool):
    raise validation.ConfigError(f"mesh.fsdp={fields['fsdp']!r} is invalid: True or False")
  import jax  # noqa: PLC0415  (config validation stays importable without a backend)

  visible = jax.device_count()
  total = n or visible
  if total > visible:
    raise validation.ConfigError(
      f"mesh.num_devices={n} is invalid: only {visible} devices are visible"
    )
  if total % model:
    raise validation.ConfigError(
      f"mesh.model={model} is invalid: must divide the {total} devices of the mesh"
    )
  if total % jax.process_count():
    raise validation.ConfigError(
      f"mesh.num_devices={n} is invalid: must be a multiple of the {jax.process_count()} processes"
    )


def num_data_shards(config: Any) -> int:
  """Size of the ``data`` mesh axis a full config trains on (rows of a step split this way).

  The DP sampler's cap (``trustml.privacy.config``) uses ``physical batch x num_data_shards``.
  """
  fields = mesh_fields(config)
  import jax  # noqa: PLC0415

  return int(fields["num_devices"] or jax.device_count()) // int(fields["model"])


def validate_train(cfg: Mapping[str, Any]) -> None:
  """Validates the ``train`` section.

  Raises:
    ConfigError: naming the field and the allowed range.
  """
  validation.known_fields("train", cfg.keys(), TRAIN_FIELDS)
  validation.positive_int("train.batch_size", cfg["batch_size"])
  validation.non_negative_int("train.num_steps", cfg["num_steps"])
  validation.non_negative("train.num_epochs", cfg["num_epochs"])
  if not cfg["num_epochs"] and not cfg["num_steps"]:
    raise validation.ConfigError(
      f"train.num_epochs={cfg['num_epochs']!r} is invalid: must be > 0, or set "
      "train.num_steps > 0 to train for a fixed number of steps"
    )
  validation.one_of("train.optimizer", cfg["optimizer"], OPTIMIZERS)
  validation.positive("train.learning_rate", cfg["learning_rate"])
  validation.non_negative("train.weight_decay", cfg["weight_decay"])
  validation.one_of("train.schedule", cfg["schedule"], SCHEDULES)
  for k in ("warmup_steps", "eval_every", "log_every", "checkpoint_every"):
    validation.non_negative_int(f"train.{k}", cfg[k])
  validation.positive_int("train.eval_batch_size", cfg["eval_batch_size"])
  validation.positive_int("train.max_to_keep", cfg["max_to_keep"])


def validate_text(cfg: Mapping[str, Any]) -> None:
  """Validates the ``text`` section."""
  validation.known_fields("text", cfg.keys(), TEXT_FIELDS)
  validation.one_of("text.kind", cfg["kind"], ("word", "char"))
  validation.positive_int("text.vocab_size", cfg["vocab_size"])
  if cfg["vocab_size"] <= 4:
    raise validation.ConfigError(f"text.vocab_size={cfg['vocab_size']} is invalid: must be > 4")
  validation.positive_int("text.min_count", cfg["min_count"])
  validation.positive_int("text.max_len", cfg["max_len"])


def num_train_steps(cfg: Mapping[str, Any], num_examples: int) -> int:
  """Optimizer steps of a run: from ``num_epochs`` when > 0, else ``num_steps``."""
  if cfg["num_epochs"] and cfg["num_epochs"] > 0:
    return max(1, -(-int(round(cfg["num_epochs"] * num_examples)) // int(cfg["batch_size"])))
  return int(cfg["num_steps"])


def make_optimizer(cfg: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
  """The optax optimizer of the ``train`` section (schedule included)."""
  lr = float(cfg["learning_rate"])
  warmup = int(cfg["warmup_steps"])
  if cfg["schedule"] == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
      0.0, lr, max(warmup, 1), max(total_steps, warmup + 1), end_value=0.0
    )
  elif warmup:
    schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  else:
    schedule = optax.constant_schedule(lr)
  name = cfg["optimizer"]
  if name == "adam":
    return optax.adam(schedule)
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=float(cfg["weight_decay"]))
  if name == "momentum":
    return optax.sgd(schedule, momentum=0.9)
  return optax.sgd(schedule)


__all__ = [
  "MESH_FIELDS",
  "OPTIMIZERS",
  "SCHEDULES",
  "default_mesh_config",
  "default_text_config",
  "default_train_config",
  "make_optimizer",
  "mesh_fields",
  "num_data_shards",
  "num_train_steps",
  "validate_mesh",
  "validate_text",
  "validate_train",
]
