"""The privacy engine: DP-SGD, eDP-SGD (ghost clipping), sampling and dp_accounting ledgers.

Modules: :mod:`per_example` (vmap gradients), :mod:`clipping`, :mod:`ghost` (book-keeping
ghost clipping), :mod:`noise`, :mod:`mechanism` (gradient functions, optax form),
:mod:`sampling`, :mod:`adaptive` (quantile clipping), :mod:`accounting`, :mod:`ledger`,
:mod:`config` (the ``privacy`` section) and :mod:`training` (``run(config, workdir)``).
"""

from trustml.privacy import (
  accounting,
  adaptive,
  clipping,
  config,
  ghost,
  ledger,
  mechanism,
  noise,
  per_example,
  sampling,
)
from trustml.privacy.ledger import PrivacyLedger
from trustml.privacy.mechanism import dp_aggregate, make_grad_fn

__all__ = [
  "PrivacyLedger",
  "accounting",
  "adaptive",
  "clipping",
  "config",
  "dp_aggregate",
  "ghost",
  "ledger",
  "make_grad_fn",
  "mechanism",
  "noise",
  "per_example",
  "sampling",
]
