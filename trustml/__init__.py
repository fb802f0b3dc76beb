"""trustml: trustworthy NLP in JAX (privacy, federated learning, fairness).

The package is a library only: no flags, no global state. ``import trustml`` is cheap; each
subpackage is imported on first use (``trustml.privacy.accounting``):

* ``trustml.core``: types, rng streams, mesh helpers, config validation, logs and plots.
* ``trustml.data``: tokenizers, sources (TFDS, local real sets, embedded corpus), batching.
* ``trustml.models``: Flax NLU models wrapped into the one ``Model`` contract; Haiku adapter.
* ``trustml.train``: training loop, evaluation, orbax checkpoints, metric writers.
* ``trustml.privacy``: DP-SGD, eDP-SGD, sampling and accounting (dp_accounting).
* ``trustml.attacks``: membership inference, audits, canary exposure and extraction.
* ``trustml.federated``: partitions, selection, the jitted round, DP-FedAvg.
* ``trustml.fairness``: prediction sensitivity, group metrics, association tests, distillation.
* ``trustml.configs``: the experiment configs (``get_config(arg)``) the launch scripts use.

One call per pillar runs an experiment from a config and returns its summary, with progress
shown in a notebook: ``trustml.train.run(config, workdir)``, ``trustml.federated.run``,
``trustml.attacks.run``, ``trustml.fairness.run`` (see :mod:`trustml.core.entry`).

Example:
  >>> import trustml
  >>> summary = trustml.train.run("dp_nlu:smoke", "/tmp/dp_smoke")  # doctest: +SKIP
"""

import importlib
from typing import Any

__version__ = "0.1.0"

SUBPACKAGES = (
  "attacks",
  "configs",
  "core",
  "data",
  "fairness",
  "federated",
  "models",
  "privacy",
  "train",
)


def __getattr__(name: str) -> Any:
  if name in SUBPACKAGES:
    module = importlib.import_module(f"trustml.{name}")
    globals()[name] = module
    return module
  raise AttributeError(f"module 'trustml' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted([*globals(), *SUBPACKAGES])


__all__ = [*SUBPACKAGES, "__version__"]
