"""The public API of trustml.federated."""

import trustml.federated as fed


def test_public_names():
  assert sorted(fed.__all__) == sorted(
    [
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
  )
  for name in fed.__all__:
    assert hasattr(fed, name)
