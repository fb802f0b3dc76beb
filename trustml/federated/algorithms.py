"""FL algorithm builders: FedAvg, FedProx, FedOpt (FedAdam, FedYogi, FedAdagrad, FedAvgM), SCAFFOLD.

Each builder returns a :class:`trustml.federated.round.FedAlgorithm` ``(init, apply)``
(FedJAX style) whose ``apply`` runs one whole round as one jitted function. The aggregation
weighting (``n_i`` or uniform) is chosen when the round is packed
(:func:`trustml.federated.selection.aggregation_weights`), not here.

* FedAvg (McMahan et al. 2017): local SGD, server SGD with learning rate 1 on ``-Delta``.
* FedProx (Li et al. 2020): local objective ``F_i(w) + mu/2 ||w - w_t||^2``.
* FedOpt (Reddi et al. 2021): any optax server optimizer on the pseudo-gradient ``-Delta``;
  FedAdagrad / FedAdam / FedYogi use Alg. 2 of the paper (``τ`` outside the square root, no
  bias correction, :mod:`trustml.federated.server_optimizers`); optax's own versions stay
  available as ``optax_adagrad`` / ``optax_adam`` / ``optax_yogi``.
* SCAFFOLD (Karimireddy et al. 2020), option II control variates, server lr ``eta_g``. The
  server control update is the paper's ``c <- c + (1/N) sum_{i in S} dc_i = c + |S|/N *
  mean_{i in S} dc_i``: uniform over the sampled clients whatever the aggregation weighting
  (:mod:`trustml.federated.round`). The model update uses the packed weights: the paper's
  ``x <- x + eta_g * mean_{i in S} dy_i`` is ``selection.weighting="uniform"``; with
  ``num_examples`` the deltas (never the controls) are size-weighted.
"""

from collections.abc import Mapping
from typing import Any

import jax
import optax

from trustml.core import validation
from trustml.federated import dp as dp_lib
from trustml.federated import round as round_lib
from trustml.federated import server_optimizers
from trustml.models import contract

ALGORITHMS = (
  "fedavg",
  "fedprox",
  "fedadam",
  "fedyogi",
  "fedadagrad",
  "fedavgm",
  "fedopt",
  "scaffold",
)
SERVER_OPTIMIZERS = (
  "sgd",
  "momentum",
  "adam",
  "yogi",
  "adagrad",
  "optax_adam",
  "optax_yogi",
  "optax_adagrad",
)


def server_optimizer(
  name: str,
  learning_rate: float,
  *,
  momentum: float = 0.9,
  b1: float | None = None,
  b2: float = 0.99,
  eps: float = 1e-3,
  initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """A server optimizer by name.

  ``adam`` / ``yogi`` / ``adagrad`` are Reddi et al. 2021's Alg. 2 with ``τ = eps`` outside the
  square root and no bias correction (:func:`trustml.federated.server_optimizers.reddi`;
  ``b1=None`` gives 0 for adagrad, 0.9 otherwise; ``initial_accumulator=None`` gives ``τ²``).
  ``optax_adam`` / ``optax_yogi`` / ``optax_adagrad`` are optax's own (bias-corrected Adam/Yogi,
  Adagrad with ``eps`` inside the root and a zero initial accumulator).

  Args:
    name: one of :data:`SERVER_OPTIMIZERS`.
    learning_rate: server learning rate ``η``.
    momentum: FedAvgM momentum.
    b1: ``β1``.
    b2: ``β2``.
    eps: ``τ`` (Reddi) or optax's ``eps``.
    initial_accumulator: Reddi's ``v_{-1}``.

  Returns:
    The optax transformation applied to the pseudo-gradient ``-Delta``.

  Raises:
    ConfigError: on an unknown name or invalid hyperparameters.

  Example:
    >>> opt = server_optimizer("adagrad", 1.0)
  """
  validation.one_of("algorithm.server_optimizer", name, SERVER_OPTIMIZERS)
  validation.positive("algorithm.server_learning_rate", learning_rate)
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "momentum":
    return optax.sgd(learning_rate, momentum=momentum)
  if name in server_optimizers.REDDI_VARIANTS:
    return server_optimizers.reddi(
      name, learning_rate, b1=b1, b2=b2, tau=eps, initial_accumulator=initial_accumulator
    )
  b1 = 0.9 if b1 is None else b1
  if name == "optax_adam":
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "optax_yogi":
    return optax.yogi(learning_rate, b1=b1, b2=b2, eps=eps)
  return optax.adagrad(learning_rate, initial_accumulator_value=0.0, eps=eps)


def fed_avg(
  model: contract.Model,
  *,
  client_learning_rate: float,
  server_learning_rate: float = 1.0,
  mesh: jax.sharding.Mesh | None = None,
  dp: dp_lib.DpConfig | None = None,
  dropout: bool = False,
) -> round_lib.FedAlgorithm:
  """FedAvg: local SGD, server SGD on the (weighted) mean delta (DP-FedAvg with ``dp``).

  Example:
    >>> alg = fed_avg(model, client_learning_rate=0.1)
  """
  return fed_opt(
    model,
    client_learning_rate=client_learning_rate,
    server=optax.sgd(validation.positive("algorithm.server_learning_rate", server_learning_rate)),
    name="fedavg",
    mesh=mesh,
    dp=dp,
    dropout=dropout,
  )


def fed_prox(
  model: contract.Model,
  *,
  client_learning_rate: float,
  proximal_mu: float,
  server_learning_rate: float = 1.0,
  mesh: jax.sharding.Mesh | None = None,
  dp: dp_lib.DpConfig | None = None,
  dropout: bool = False,
) -> round_lib.FedAlgorithm:
  """FedProx: FedAvg with the proximal term ``mu/2 ||w - w_t||^2`` in local training."""
  validation.non_negative("algorithm.proximal_mu", proximal_mu)
  return fed_opt(
    model,
    client_learning_rate=client_learning_rate,
    server=optax.sgd(validation.positive("algorithm.server_learning_rate", server_learning_rate)),
    proximal_mu=proximal_mu,
    name="fedprox",
    mesh=mesh,
    dp=dp,
    dropout=dropout,
  )


def fed_opt(
  model: contract.Model,
  *,
  client_learning_rate: float,
  server: optax.GradientTransformation,
  proximal_mu: float = 0.0,
  name: str = "fedopt",
  mesh: jax.sharding.Mesh | None = None,
  dp: dp_lib.DpConfig | None = None,
  dropout: bool = False,
) -> round_lib.FedAlgorithm:
  """FedOpt: local SGD, any optax ``server`` optimizer on the pseudo-gradient ``-Delta``."""
  lr = validation.positive("algorithm.client_learning_rate", client_learning_rate)
  spec = round_lib.RoundSpec(
    name=name,
    client_optimizer=optax.sgd(lr),
    server_optimizer=server,
    proximal_mu=float(proximal_mu),
    client_learning_rate=lr,
    dp=dp,
    dropout=dropout,
  )
  return round_lib.build(model, spec, mesh=mesh)


def scaffold(
  model: contract.Model,
  *,
  client_learning_rate: float,
  server_learning_rate: float = 1.0,
  mesh: jax.sharding.Mesh | None = None,
  dropout: bool = False,
) -> round_lib.FedAlgorithm:
  """SCAFFOLD (option II). The packed round must carry each client's ``control`` ``[C, ...]`` and
  ``scalars["control_scale"] = 1 / N``; ``diagnostics["clients"]["control"]`` returns the new
  client control variates to store.

  Per sampled client (Alg. 1 of Karimireddy et al. 2020): ``K_i`` local steps
  ``y <- y - lr (g_i(y) + c - c_i)``, then ``c_i+ = c_i - c + (x - y_i) / (K_i lr)``. The server
  takes ``x <- x + eta_g * sum_i w_i dy_i / sum_i w_i`` (``w_i`` = the packed weights; uniform
  weights give the paper's mean) and ``c <- c + control_scale * sum_{i in S} dc_i``, an
  unweighted sum over the real (weight > 0) clients, i.e. ``|S|/N * mean_{i in S} dc_i``.

  Args:
    model: the model contract.
    client_learning_rate: local SGD step size ``lr`` (> 0).
    server_learning_rate: ``eta_g`` (> 0).
    mesh: optional ``clients`` mesh for the sharded round.
    dropout: use dropout keys in local steps.

  Returns:
    The algorithm ``(init, apply, reference_apply)``.

  Raises:
    ConfigError: on a non-positive learning rate.
  """
  lr = validation.positive("algorithm.client_learning_rate", client_learning_rate)
  spec = round_lib.RoundSpec(
    name="scaffold",
    client_optimizer=optax.sgd(lr),
    server_optimizer=optax.sgd(
      validation.positive("algorithm.server_learning_rate", server_learning_rate)
    ),
    scaffold=True,
    client_learning_rate=lr,
    dropout=dropout,
  )
  return round_lib.build(model, spec, mesh=mesh)


def validate_algorithm(cfg: Mapping[str, Any]) -> None:
  """Checks an ``algorithm`` config section before any compute.

  Raises:
    ConfigError: on an unknown algorithm or server optimizer, or invalid rates.
  """
  validation.one_of("algorithm.name", cfg["name"], ALGORITHMS)
  validation.positive("algorithm.client_learning_rate", cfg["client_learning_rate"])
  validation.positive("algorithm.server_learning_rate", cfg["server_learning_rate"])
  validation.non_negative("algorithm.proximal_mu", cfg.get("proximal_mu", 0.0))
  if cfg["name"] == "fedopt":
    validation.one_of(
      "algorithm.server_optimizer", cfg.get("server_optimizer", "sgd"), SERVER_OPTIMIZERS
    )
  validation.positive("algorithm.server_tau", cfg.get("server_tau", 1e-3))
  for field in ("server_b1", "server_b2"):
    if cfg.get(field) is not None:
      validation.in_range(f"algorithm.{field}", cfg[field], 0.0, 1.0, low_inclusive=True)
  if cfg["name"] == "scaffold" and cfg.get("dp_enabled", False):
    raise validation.ConfigError(
      "algorithm.name='scaffold' is invalid with DP: use fedavg or fedopt"
    )


def from_config(
  model: contract.Model,
  cfg: Mapping[str, Any],
  *,
  mesh: jax.sharding.Mesh | None = None,
  dp: dp_lib.DpConfig | None = None,
  dropout: bool = False,
) -> round_lib.FedAlgorithm:
  """Builds an algorithm from an ``algorithm`` config section.

  Args:
    model: the Model contract.
    cfg: ``name`` in :data:`ALGORITHMS`, ``client_learning_rate``, ``server_learning_rate``,
      ``proximal_mu`` (fedprox), ``server_optimizer`` (fedopt), ``server_momentum``, and for
      the adaptive server optimizers ``server_tau`` (default 1e-3), ``server_b1`` (default
      0 for adagrad, 0.9 otherwise), ``server_b2`` (default 0.99).
    mesh: optional ``clients`` mesh.
    dp: optional user-level DP settings.
    dropout: local dropout.

  Returns:
    The algorithm.

  Raises:
    ConfigError: on invalid fields.
  """
  validate_algorithm(dict(cfg, dp_enabled=dp is not None))
  name = cfg["name"]
  clr, slr = cfg["client_learning_rate"], cfg["server_learning_rate"]
  kw = {"mesh": mesh, "dropout": dropout}
  if name == "fedavg":
    return fed_avg(model, client_learning_rate=clr, server_learning_rate=slr, dp=dp, **kw)
  if name == "fedprox":
    return fed_prox(
      model,
      client_learning_rate=clr,
      server_learning_rate=slr,
      proximal_mu=cfg["proximal_mu"],
      dp=dp,
      **kw,
    )
  if name == "scaffold":
    return scaffold(model, client_learning_rate=clr, server_learning_rate=slr, **kw)
  opt_name = {
    "fedadam": "adam",
    "fedyogi": "yogi",
    "fedadagrad": "adagrad",
    "fedavgm": "momentum",
  }.get(name, cfg.get("server_optimizer", "sgd"))
  server = server_optimizer(
    opt_name,
    slr,
    momentum=cfg.get("server_momentum", 0.9),
    b1=cfg.get("server_b1", None),
    b2=cfg.get("server_b2", 0.99),
    eps=cfg.get("server_tau", 1e-3),
  )
  return fed_opt(model, client_learning_rate=clr, server=server, name=name, dp=dp, **kw)


__all__ = [
  "ALGORITHMS",
  "SERVER_OPTIMIZERS",
  "fed_avg",
  "fed_opt",
  "fed_prox",
  "from_config",
  "scaffold",
  "server_optimizer",
  "validate_algorithm",
]
