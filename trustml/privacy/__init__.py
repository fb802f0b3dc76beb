"""The privacy engine: DP-SGD, eDP-SGD (ghost clipping), sampling and dp_accounting ledgers.

One core for every DP path: :mod:`aggregators` (the clipped sum / count a path releases, its
unit of privacy, neighbouring relation and sensitivity), :mod:`noise` (the privatizer, keyed
from a secret stream) and :mod:`ledger` (records of what each step ran, composed with
dp_accounting). Modules: :mod:`per_example` (vmap gradients), :mod:`clipping`, :mod:`ghost`
(book-keeping ghost clipping), :mod:`mechanism` (DP-SGD / eDP-SGD transformation, optax form),
:mod:`sampling`, :mod:`adaptive` (quantile clipping), :mod:`accounting`, :mod:`ledger`,
:mod:`config` (the ``privacy`` section) and :mod:`training` (``run(config, workdir)``).
"""

from trustml.privacy import (
  accounting,
  adaptive,
  aggregators,
  clipping,
  config,
  ghost,
  ledger,
  mechanism,
  noise,
  per_example,
  sampling,
)
from trustml.privacy.aggregators import ClippedAggregator
from trustml.privacy.ledger import PrivacyLedger, StepRecord
from trustml.privacy.mechanism import DpSgd, dp_aggregate, dp_sgd, make_grad_fn
from trustml.privacy.noise import gaussian_privatizer

__all__ = [
  "ClippedAggregator",
  "DpSgd",
  "PrivacyLedger",
  "StepRecord",
  "accounting",
  "adaptive",
  "aggregators",
  "clipping",
  "config",
  "dp_aggregate",
  "dp_sgd",
  "gaussian_privatizer",
  "ghost",
  "ledger",
  "make_grad_fn",
  "mechanism",
  "noise",
  "per_example",
  "sampling",
]
