"""A population of clients built from a config and encoded data, and the FL config sections.

:func:`validate` checks every federated config section (``partition``, ``selection``,
``algorithm``, ``federated``, ``continual``, ``dp``) before any data is read or any compute;
:func:`build` turns the spine's encoded splits into a :class:`Population`: the partition of the
train and eval rows into clients, and its statistics.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.federated import algorithms, continual, partition, selection

PARTITIONS = ("natural", "iid", "dirichlet", "quantity", "cluster")
SECTIONS = ("partition", "selection", "algorithm", "federated", "continual", "dp")
SETTINGS = ("static", "continual")


@dataclasses.dataclass(frozen=True)
class Population:
  """Clients of a run.

  Attributes:
    partition: client -> rows of ``train`` and ``test``.
    sizes: train examples per client (``[K]``, all >= 1).
    stats: partition statistics (JSON-friendly).
  """

  partition: partition.Partition
  sizes: np.ndarray
  stats: Mapping[str, Any]

  @property
  def num_clients(self) -> int:
    """Population size ``N``."""
    return len(self.sizes)


def validate_config(config: Any) -> None:
  """Checks the federated sections of ``config`` before any compute.

  Raises:
    ConfigError: naming the first invalid field (alpha <= 0, unknown algorithm or sampler,
      storage cap < 1, ...), or a missing federated section.
  """
  validation.required_sections(
    config, SECTIONS, needed_by="federated training", hint="configs/fed_nlu.py"
  )
  p = config.partition
  validation.one_of("partition.kind", p.kind, PARTITIONS)
  if p.kind in ("iid", "dirichlet", "quantity", "cluster"):
    validation.positive_int("partition.num_clients", p.num_clients)
  if p.kind in ("dirichlet", "cluster"):
    validation.positive("partition.alpha", p.alpha)
    validation.one_of(
      "partition.dirichlet_procedure",
      p.get("dirichlet_procedure", "fednlp"),
      partition.DIRICHLET_PROCEDURES,
    )
  if p.kind == "quantity":
    validation.positive("partition.beta", p.beta)
  if p.kind == "cluster":
    validation.positive_int("partition.num_clusters", p.num_clusters)
  validation.positive_int("partition.min_examples", p.min_examples)
  s = config.selection
  selection.Sampler(s.sampler, s.num_clients_per_round, s.beta, s.mode).validate(1 << 62)
  validation.one_of("selection.weighting", s.weighting, selection.WEIGHTINGS)
  validation.one_of(
    "selection.estimator", s.get("estimator", "self_normalized"), selection.ESTIMATORS
  )
  algorithms.validate_algorithm(
    dict(config.algorithm.to_dict(), dp_enabled=bool(config.dp.enabled))
  )
  f = config.federated
  validation.positive_int("federated.rounds", f.rounds)
  validation.positive_int("federated.batch_size", f.batch_size)
  validation.positive("federated.local_epochs", f.local_epochs)
  validation.positive_int("federated.max_local_steps", f.max_local_steps)
  validation.non_negative_int("federated.eval_every", f.eval_every)
  validation.non_negative_int("federated.checkpoint_every", f.checkpoint_every)
  validation.non_negative_int("federated.num_devices", f.num_devices)
  validation.one_of("federated.backend", f.backend, ("vmap", "reference"))
  validation.one_of("federated.setting", f.setting, SETTINGS)
  if f.setting == "continual":
    c = config.continual
    validation.positive_int("continual.num_periods", c.num_periods)
    validation.positive_int("continual.storage_cap", c.storage_cap)
    validation.one_of("continual.deletion_policy", c.deletion_policy, continual.POLICIES)
    validation.one_of("continual.process", c.process, continual.PROCESSES)
    if f.rounds % c.num_periods:
      raise validation.ConfigError(
        f"federated.rounds={f.rounds} is invalid: must be a multiple of continual.num_periods={c.num_periods}"
      )
  if config.dp.enabled:
    if s.sampler != "uniform":
      raise validation.ConfigError(
        f"selection.sampler={s.sampler!r} is invalid with dp.enabled: user-level DP accounting here needs 'uniform'"
      )
    if f.setting != "static":
      raise validation.ConfigError(
        "federated.setting='continual' is invalid with dp.enabled: use 'static'"
      )
    dp_fields = {k: v for k, v in config.dp.to_dict().items() if k != "enabled"}
    from trustml.federated import dp as dp_lib  # Local: dp pulls in nothing heavy, kept explicit.

    dp_cfg = dp_lib.DpConfig(**dp_fields).validate()
    dp_lib.validate_selection(dp_cfg, s.sampler, s.mode)


def sentence_embeddings(
  arrays: Mapping[str, np.ndarray], dim: int = 64, *, seed: int
) -> np.ndarray:
  """Fixed random-projection bag-of-words sentence embeddings (mean of Gaussian token vectors).

  A model-free embedding, deterministic from ``seed``, used for cluster-skew partitions.
  """
  tokens, mask = np.asarray(arrays["tokens"]), np.asarray(arrays["mask"]).astype(np.float64)
  vocab = int(tokens.max()) + 1
  table = rng_lib.numpy_rng(seed, "partition/embedding").normal(size=(vocab, dim)) / np.sqrt(dim)
  emb = (table[tokens] * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)
  return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def build(
  config: Any, train: Mapping[str, np.ndarray], evals: Mapping[str, np.ndarray]
) -> Population:
  """Partitions the encoded train/eval splits into clients.

  Args:
    config: the run config (``partition`` section and ``seed``).
    train: encoded train split (``label``, ``user_id``, ``tokens`` ...).
    evals: encoded eval split.

  Returns:
    The population (clients with >= ``partition.min_examples`` train rows).

  Raises:
    ConfigError: if the partition cannot be made (too many clients, no users ...).
  """
  p = config.partition
  seed = int(config.seed)
  n = {"train": len(train["tokens"]), "test": len(evals["tokens"])}
  if p.kind == "natural":
    if np.all(np.asarray(train["user_id"]) < 0):
      raise validation.ConfigError(
        "partition.kind='natural' is invalid: this dataset has no user_id"
      )
    part = partition.natural(
      {"train": train["user_id"], "test": evals["user_id"]}, min_examples=p.min_examples
    )
  elif p.kind == "iid":
    part = partition.iid(n, p.num_clients, seed=seed)
  elif p.kind == "quantity":
    part = partition.quantity_skew(n, p.num_clients, p.beta, seed=seed)
  elif p.kind == "dirichlet":
    part = partition.dirichlet_label(
      {"train": train["label"], "test": evals["label"]},
      p.num_clients,
      p.alpha,
      seed=seed,
      procedure=p.get("dirichlet_procedure", "fednlp"),
    )
  else:
    emb = {
      "train": sentence_embeddings(train, seed=seed),
      "test": sentence_embeddings(evals, seed=seed),
    }
    part = partition.cluster_skew(
      emb, p.num_clients, p.alpha, num_clusters=p.num_clusters, seed=seed
    )
  sizes = part.sizes("train")
  if np.any(sizes < 1):
    raise validation.ConfigError("the partition has an empty client: lower partition.num_clients")
  labels = np.asarray(train["label"]) if np.all(np.asarray(train["label"]) >= 0) else None
  stats = partition.statistics(part, labels)
  stats.pop("label_entropy", None)  # Per-client list: kept out of the flat summary.
  return Population(part, sizes, stats)


__all__ = [
  "PARTITIONS",
  "SECTIONS",
  "SETTINGS",
  "Population",
  "build",
  "sentence_embeddings",
  "validate_config",
]
