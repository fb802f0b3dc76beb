"""Federated intent classification: algorithm x partition x alpha (base of every fed_* config).

Launch:
  python -m launch.federated --config=configs/fed_nlu.py --workdir=/tmp/fed
  python -m launch.federated --config=configs/fed_nlu.py:data=snips,algorithm=fedprox,alpha=0.1 --workdir=/tmp/fs
  python -m launch.federated --config=configs/fed_nlu.py:data=snips,centralized --workdir=/tmp/central
  python -m launch.federated --config=configs/fed_nlu.py:dp,rounds=30,per_round=200 --workdir=/tmp/dpfed
  python -m launch.federated --config=configs/fed_nlu.py:smoke --workdir=/tmp/fed_smoke

Args (comma-separated after ``:``):
  data: synthetic (embedded corpus, natural users) | snips | sst2 (default synthetic).
  model: bag | cnn | transformer (default bag).
  algorithm: fedavg | fedprox | fedadam | fedyogi | fedadagrad | fedavgm | scaffold.
  partition: natural | iid | dirichlet | quantity | cluster ('' = natural where the data has users,
    else dirichlet).
  alpha: Dirichlet concentration of label/cluster skew.
  clients: number of synthetic clients (partitions other than natural; given with natural,
    it is an error, as is alpha with a partition other than dirichlet or cluster).
  per_round: clients per round.
  rounds: federated rounds.
  dp: user-level DP-FedAvg (Poisson client sampling, fixed clip 1.0; adaptive clipping via
    --config.dp.adaptive=True needs large cohorts, see docs/federated.md).
  centralized: train the same model on the pooled data instead (baseline).
  devices: devices for the clients mesh (0 = all).
  smoke: shrink everything for a seconds-long run.
  seed: root seed.
"""

import ml_collections
from ml_collections import config_dict

from trustml.configs import nlu
from trustml.core import config_args, validation

FED_ARGS = dict(
  algorithm="fedavg",
  partition="",
  alpha=1.0,
  clients=100,
  per_round=20,
  rounds=60,
  dp=False,
  centralized=False,
  devices=0,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the federated NLU config for ``arg`` (see module docstring)."""
  a = config_args.parse_common(arg, **FED_ARGS)
  return add_federated(nlu.build(a), a)


def add_federated(config: ml_collections.ConfigDict, a: ml_collections.ConfigDict):
  """Adds the federated sections (partition, selection, algorithm, rounds, continual, dp).

  Args:
    config: a config from :func:`trustml.configs.nlu.build` (changed in place).
    a: parsed args with :data:`FED_ARGS` and the common ones.

  Returns:
    ``config``.
  """
  if a.data == "snips":
    config.data.snips_train = "small"  # 2,100 train queries: sized for CPU sweeps.
  kind = a.partition or ("natural" if a.data in ("synthetic", "tiny_shakespeare") else "dirichlet")
  _reject_ignored_args(a, kind)
  # How the train/test rows are split into clients (trustml.federated.partition).
  config.partition = ml_collections.ConfigDict(
    {
      "kind": kind,  # natural | iid | dirichlet | quantity | cluster.
      "num_clients": a.clients,  # Clients of synthetic partitions.
      "alpha": a.alpha,  # Dirichlet concentration (label / cluster skew), > 0.
      # fednlp (FedNLP's label_skew_process per split, default) | consistent (one mix per client
      # for train and test, equal sizes, greedy refill).
      "dirichlet_procedure": "fednlp",
      "beta": 0.5,  # Dirichlet concentration of client shares (quantity skew), > 0.
      "num_clusters": 8,  # k of k-means (cluster skew).
      "min_examples": 2 if kind == "natural" else 1,  # Natural clients need this many train rows.
    }
  )
  # Device selection per round (trustml.federated.selection).
  config.selection = ml_collections.ConfigDict(
    {
      "sampler": "uniform",  # uniform | activity (probability propto n_i^beta).
      "num_clients_per_round": a.per_round,  # m (expected m under Poisson).
      "beta": 1.0,  # Activity exponent.
      "mode": "poisson" if a.dp else "without_replacement",  # without_replacement | poisson.
      "weighting": "num_examples",  # num_examples | uniform | inverse_probability (ignored under DP).
      # self_normalized (divide by the sampled weight sum, Hajek) | fixed_denominator (divide by
      # sum_i pi_i w_i, Horvitz-Thompson, exactly unbiased; ignored under DP).
      "estimator": "self_normalized",
    }
  )
  # The FL algorithm (trustml.federated.algorithms).
  config.algorithm = ml_collections.ConfigDict(
    {
      "name": a.algorithm,
      "client_learning_rate": 1.0,  # Local SGD step size.
      "server_learning_rate": 0.01 if a.algorithm in ("fedadam", "fedyogi", "fedadagrad") else 1.0,
      "proximal_mu": 0.01,  # FedProx mu (used by fedprox only).
      # fedopt: sgd | momentum | adam | yogi | adagrad (Reddi et al. 2021 Alg. 2) |
      # optax_adam | optax_yogi | optax_adagrad (optax's bias-corrected / eps-inside-root forms).
      "server_optimizer": "sgd",
      "server_momentum": 0.9,  # fedavgm / momentum server optimizer.
      "server_tau": 1e-3,  # Reddi et al.'s tau, outside the square root (adaptive optimizers).
      "server_b1": 0.0 if a.algorithm == "fedadagrad" else 0.9,  # beta1 (adaptive optimizers).
      "server_b2": 0.99,  # beta2 (FedAdam / FedYogi).
    }
  )
  # The rounds.
  config.federated = ml_collections.ConfigDict(
    {
      "rounds": a.rounds,  # Federated rounds.
      "batch_size": 16,  # Local batch size.
      "local_epochs": 2.0,  # Passes over a client's data per round.
      "max_local_steps": 16,  # Cap on local steps (bounds padding and compute per round).
      "eval_every": max(a.rounds // 10, 1),  # Rounds between evaluations (the eval curve).
      "checkpoint_every": max(a.rounds // 4, 1),  # Rounds between orbax checkpoints.
      "num_devices": a.devices,  # Devices of the clients mesh (0 = all).
      "backend": "vmap",  # vmap (one jitted round) | reference (Python loop over clients).
      "setting": "static",  # static | continual.
      "centralized": a.centralized,  # Train on pooled data with the spine loop instead.
    }
  )
  # Continual FL (used when federated.setting == 'continual').
  config.continual = ml_collections.ConfigDict(
    {
      "num_periods": 4,  # Time periods T (rounds split evenly over them).
      "storage_cap": 32,  # Rows a client can store (>= 1).
      "deletion_policy": "drop_oldest",  # drop_oldest | drop_previous_period | reservoir.
      "process": "sequential",  # Arrivals: sequential (data order) | random | staggered.
    }
  )
  # User-level DP-FedAvg (trustml.federated.dp).
  config.dp = ml_collections.ConfigDict(
    {
      "enabled": a.dp,  # Clip, noise, fixed denominator, accounting.
      "l2_clip_norm": 1.0,  # Clip of a client's delta (initial clip when adaptive).
      "noise_multiplier": 1.0,  # Total z: noise std / C (accounted z/2 for fixed cohorts).
      "per_layer": False,  # Clip leaf by leaf.
      "weight_cap": 20.0,  # w_i = min(n_i / weight_cap, 1).
      "adaptive": False,  # Andrew et al. 2021 quantile tracking (diverges with ~20-client cohorts).
      "target_quantile": 0.5,  # Target unclipped fraction.
      "clip_learning_rate": 0.2,  # Geometric clip step.
      "count_noise_multiplier": max(a.per_round / 20.0, 0.6),  # sigma_b (must exceed z / 2).
      "delta": 1e-5,  # Target delta.
      "accountant": "rdp",  # rdp | pld (pld: Poisson cohorts only).
      "truncation_budget": 1e-3,  # Poisson cohort cap: run-wide P(truncation) <= this * delta.
      # None: noise and cohort coins from secret OS entropy (kept in the checkpoint only); an
      # int fixes them (the run says its guarantee assumes the seed stays secret).
      "noise_seed": config_dict.placeholder(int),
      "release_unsafe_stats": False,  # Also write exact cohort sizes / losses (not covered).
    }
  )
  # Centralized baseline budget: the spine loop reads config.train (same model and data).
  config.train.num_epochs = 0.0
  # About the FL budget in example-gradients for ~21-row clients: per_round * 42 rows / 16 per round.
  config.train.num_steps = a.rounds * a.per_round * 2
  config.train.batch_size = 16
  config.train.eval_every = max(a.rounds * a.per_round * 2 // 10, 1)
  if a.smoke:  # Shrinks what the arg did not set explicitly (clients=1000,smoke keeps 1000).
    config.partition.num_clients = config_args.smoke_value(a, "clients", min(a.clients, 12))
    config.selection.num_clients_per_round = config_args.smoke_value(
      a, "per_round", min(a.per_round, 4)
    )
    config.federated.rounds = config_args.smoke_value(a, "rounds", 3)
    config.federated.batch_size = 8
    config.federated.max_local_steps = 2
    config.federated.eval_every = 1
    config.federated.checkpoint_every = 2
    config.continual.num_periods = 3
    config.continual.storage_cap = 8
    config.train.num_steps = 6
    config.dp.count_noise_multiplier = 1.0
  return config


def _reject_ignored_args(a: ml_collections.ConfigDict, kind: str) -> None:
  """An arg written explicitly that the partition would ignore is an error, not a no-op."""
  given = getattr(a, "given", ())
  if "clients" in given and kind == "natural":
    raise validation.ConfigError(
      f"config arg clients={a.clients} is invalid with partition=natural (each user of the "
      "data is one client): add partition=iid, dirichlet, quantity or cluster"
    )
  if "alpha" in given and kind not in ("dirichlet", "cluster"):
    raise validation.ConfigError(
      f"config arg alpha={a.alpha:g} is invalid with partition={kind} (alpha is the Dirichlet "
      "concentration): add partition=dirichlet or cluster"
    )


def get_sweep(arg: str | None = None) -> list[dict]:
  """FL vs centralized across alpha for FedAvg, FedProx, FedAdam (for launch/sweep.py).

  Args:
    arg: ``data=snips,seeds=1,rounds=60``.

  Returns:
    Override dicts ``{"name", "arg"}``.
  """
  a = config_args.parse_arg(arg, data="snips", seeds=1, rounds=40, smoke=False)
  extra = f",rounds={a.rounds}" + (",smoke" if a.smoke else "")
  runs = []
  for s in range(a.seeds):
    runs.append({"name": f"central_s{s}", "arg": f"data={a.data},centralized,seed={s}{extra}"})
    for alg in ("fedavg", "fedprox", "fedadam"):
      for alpha in (0.1, 1.0, 10.0):
        runs.append(
          {
            "name": f"{alg}_a{alpha}_s{s}",
            "arg": f"data={a.data},algorithm={alg},alpha={alpha},seed={s}{extra}",
          }
        )
  return runs
