"""Federated learning: partitions, client packing, selection, continual FL, the round, DP-FedAvg.

A whole round (local training of every sampled client, aggregation, server optimizer step) is one
jitted XLA program; see :mod:`trustml.federated.round`.
"""

from trustml.core import entry as _entry
from trustml.federated import (
  algorithms,
  continual,
  dp,
  experiment,
  packing,
  partition,
  population,
  report,
  round,  # pylint: disable=redefined-builtin
  selection,
)
from trustml.federated.algorithms import fed_avg, fed_opt, fed_prox, scaffold
from trustml.federated.round import FedAlgorithm, RoundSpec, ServerState

run = _entry.one_call(
  "trustml.federated.experiment:run", pillar="federated", launcher="launch/federated.py"
)

__all__ = [
  "FedAlgorithm",
  "RoundSpec",
  "ServerState",
  "algorithms",
  "continual",
  "dp",
  "experiment",
  "fed_avg",
  "fed_opt",
  "fed_prox",
  "packing",
  "partition",
  "population",
  "report",
  "round",
  "run",
  "scaffold",
  "selection",
]
