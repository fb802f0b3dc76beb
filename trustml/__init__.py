"""trustml: trustworthy NLP in JAX (privacy, federated learning, fairness).

The package is a library only: no flags, no global state. Subpackages:

* ``trustml.core``: types, RNG streams, mesh helpers, config validation.
* ``trustml.data``: tokenizers, sources (TFDS, local real sets, embedded corpus), batching.
* ``trustml.models``: Flax NLU models wrapped into the one ``Model`` contract; Haiku adapter.
* ``trustml.train``: training loop, evaluation, orbax checkpoints, metric writers.
* ``trustml.privacy``: DP-SGD, eDP-SGD, sampling and accounting (dp_accounting).
* ``trustml.attacks``: membership inference, audits, canary exposure and extraction.
* ``trustml.federated``: partitions, selection, the jitted round, DP-FedAvg.
* ``trustml.fairness``: prediction sensitivity, group metrics, association tests, distillation.
"""

__version__ = "0.1.0"
