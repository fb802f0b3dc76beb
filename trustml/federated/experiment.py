"""A federated run from a config: ``run(config, workdir) -> summary`` (what launch/federated.py calls).

Static setting: ``federated.rounds`` rounds over the whole population. Continual setting: the
rounds are split evenly over ``continual.num_periods`` periods; at the start of each period
every client receives its newly arrived rows into a bounded store (deletion policy), the model
is warm-started from the previous period, and at the end of the period it is evaluated on every
period's held-out rows (the next period = forward transfer, past periods = forgetting).
``federated.centralized=True`` instead trains the same model on the pooled data with the
spine's loop (the centralized baseline).

Writes the run contract to ``workdir``: ``config.json``, ``metrics.jsonl``, ``summary.json``,
``checkpoints/`` (orbax; re-running resumes exactly: data order, selection and keys depend only
on the seed and the round) and ``plots/eval_curve.png``.
"""

import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from trustml.core import distributed, plots, validation
from trustml.core import rng as rng_lib
from trustml.data import batching
from trustml.federated import algorithms, continual, packing, population, selection
from trustml.federated import dp as dp_lib
from trustml.federated import round as round_lib
from trustml.privacy import aggregators
from trustml.privacy import ledger as ledger_lib
from trustml.privacy import sampling as sampling_lib
from trustml.train import checkpoint, evaluate, writers
from trustml.train import experiment as spine
from trustml.train import workdir as workdir_lib


def _dp_config(config: Any) -> dp_lib.DpConfig | None:
  if not config.dp.enabled:
    return None
  fields = {k: v for k, v in config.dp.to_dict().items() if k != "enabled"}
  cfg = dp_lib.DpConfig(**fields, cohort_mode=config.selection.mode).validate()
  dp_lib.validate_selection(cfg, config.selection.sampler, config.selection.mode)
  return cfg


def _poisson_capacity(m: int) -> int:
  """Packed client slots under Poisson sampling: ``m + 4 sqrt(m) + 2`` (overflow is truncated)."""
  return int(m + 4 * np.sqrt(m) + 2)


class _Rounds:
  """Host side of the rounds: selection, packing, the jitted round, SCAFFOLD client state."""

  def __init__(self, config, model, arrays, pop, alg, mesh, dp_cfg):
    self.config, self.model, self.arrays, self.pop, self.alg, self.mesh = (
      config,
      model,
      arrays,
      pop,
      alg,
      mesh,
    )
    self.dp = dp_cfg
    self.seed = int(config.seed)
    s = config.selection
    self.sampler = selection.Sampler(s.sampler, s.num_clients_per_round, s.beta, s.mode)
    self.num_devices = mesh.devices.size if mesh is not None else 1
    self.truncated = 0
    self.controls = None
    self.ledger: ledger_lib.PrivacyLedger | None = None  # Set for DP runs.
    self.records: dict[int, ledger_lib.StepRecord] = {}

  def _coins_seed(self) -> int:
    """Selection coins: from the ledger's secret under DP (never the public seed)."""
    return self.ledger.secret.entropy if self.ledger is not None else self.seed

  def _cohort(self, sizes: np.ndarray):
    """Eligible clients (size > 0), this round's sampler, inclusion probabilities, capacity."""
    eligible = np.flatnonzero(sizes > 0)
    m = min(self.sampler.num_clients_per_round, len(eligible))
    sampler = selection.Sampler(self.sampler.name, m, self.sampler.beta, self.sampler.mode)
    pi = selection.inclusion_probabilities(sampler, sizes[eligible])
    if sampler.mode == "poisson":
      capacity = self.poisson_capacity(len(eligible), float(np.max(pi)) if len(pi) else 0.0)
    else:
      capacity = m
    return eligible, sampler, pi, capacity

  def dp_record(self, sizes: np.ndarray) -> ledger_lib.StepRecord:
    """The accounting record of a round over clients of ``sizes`` (eligible: size > 0)."""
    eligible, sampler, pi, capacity = self._cohort(sizes)
    return self._record(len(eligible), sampler, pi, capacity)

  def _record(self, n: int, sampler, pi: np.ndarray, capacity: int) -> ledger_lib.StepRecord:
    z = dp_lib.update_noise_multiplier(self.dp)
    agg = dp_lib.aggregator(self.dp)
    accounted = (
      aggregators.effective_noise_multiplier(
        z, agg.sensitivity_factor, self.dp.count_noise_std, agg.count_sensitivity()
      )
      if z > 0
      else 0.0
    )
    if sampler.mode == "poisson":
      q = float(np.max(pi))  # Non-uniform π: each user's inclusion probability is ≤ max π.
      trunc = sampling_lib.truncation_probability(n + 1, q, capacity)
      return ledger_lib.StepRecord("poisson", q, n, 0, accounted, trunc)
    m = sampler.num_clients_per_round
    return ledger_lib.StepRecord("fixed", m / n, n, m, accounted, 0.0)

  def poisson_capacity(self, n: int, q: float) -> int:
    """Packed client slots of a Poisson cohort (DP: run-wide truncation ≤ budget · δ)."""
    m = self.sampler.num_clients_per_round
    if self.dp is None:
      return _poisson_capacity(m)
    budget = self.dp.truncation_budget * self.dp.delta
    rounds = int(self.config.federated.rounds)
    return sampling_lib.poisson_cap(n + 1, q, self.num_devices, rounds, budget)

  def init_controls(self, params):
    if self.alg.spec.scaffold:
      self.controls = jax.tree.map(
        lambda x: np.zeros((self.pop.num_clients,) + x.shape, np.float32), params
      )

  def run(self, state, client_rows: list[np.ndarray], r: int):
    """One round over the clients whose rows are ``client_rows`` (empty clients not eligible)."""
    sizes = np.array([len(x) for x in client_rows])
    eligible, sampler, pi, capacity = self._cohort(sizes)
    chosen = selection.sample(sampler, sizes[eligible], seed=self._coins_seed(), round_index=r)
    if self.dp is not None:
      self.records[r] = self._record(len(eligible), sampler, pi, capacity)
    if len(chosen) > capacity:
      keep = rng_lib.numpy_rng(self._coins_seed(), "selection/truncate", r).choice(
        len(chosen), capacity, replace=False
      )
      chosen = np.sort(chosen[keep])
      self.truncated += 1
    sel = eligible[chosen]
    if self.dp is not None:
      weights = dp_lib.capped_weights(sizes[sel], self.dp.weight_cap)
    else:
      weights = selection.aggregation_weights(
        self.config.selection.weighting, sizes[sel], pi[chosen]
      )
    f = self.config.federated
    packed = packing.pack(
      self.arrays,
      [client_rows[i] for i in sel],
      batch_size=f.batch_size,
      local_epochs=f.local_epochs,
      max_steps=f.max_local_steps,
      weights=weights,
      client_ids=sel,
      client_multiple=self.num_devices,
      num_clients=capacity,
      seed=self.seed,
      round_index=r,
    )
    real = packed["num_real_clients"]
    packed = packing.device_arrays(packed)
    total_c = len(packed["weight"])
    scalars = {"expected_clients": float(pi.sum()), "control_scale": 1.0 / self.pop.num_clients}
    if self.dp is not None:
      all_w = dp_lib.capped_weights(sizes[eligible], self.dp.weight_cap)
      scalars["denominator"] = float(pi.sum() / len(eligible) * all_w.sum())
    elif self.config.selection.get("estimator", "self_normalized") == "fixed_denominator":
      scalars["fixed_denominator"] = selection.fixed_denominator(
        self.config.selection.weighting, sizes[eligible], pi
      )
    packed["scalars"] = scalars
    if self.controls is not None:
      idx = np.concatenate([sel, np.zeros(total_c - real, np.int64)])
      packed["control"] = jax.tree.map(lambda c: c[idx], self.controls)
    if self.mesh is not None:
      packed = round_lib.shard_packed(packed, self.mesh)
    key = rng_lib.RngStreams(self.seed).at("clients", r)
    fn = self.alg.apply if f.backend == "vmap" else self.alg.reference_apply
    state, diag = fn(state, packed, key)
    if self.controls is not None:
      new = distributed.to_host(diag["clients"]["control"])  # Clients of every process.
      for c, n in zip(jax.tree.leaves(self.controls), jax.tree.leaves(new), strict=True):
        c[sel] = n[:real]
    metrics = {k: float(v) for k, v in jax.device_get(diag["metrics"]).items()}
    if self.dp is None:
      metrics["fed/clients_sampled"] = float(real)
    else:
      metrics["unsafe/clients_sampled"] = float(real)  # The realised cohort size is private.
    return state, metrics


def _subset(arrays, rows):
  return {k: np.asarray(v)[rows] for k, v in arrays.items()}


def _metric_name(model) -> str:
  return "perplexity" if model.kind == "lm" else "accuracy"


def _save(ckpt, r, state, rounds, extra):
  tree = {"state": {str(i): x for i, x in enumerate(jax.tree.leaves(state))}}
  if rounds.controls is not None:
    tree["controls"] = {str(i): x for i, x in enumerate(jax.tree.leaves(rounds.controls))}
  ckpt.save(r, tree, extra)


def _restore(ckpt, state, rounds):
  template = {"state": {str(i): x for i, x in enumerate(jax.tree.leaves(state))}}
  if rounds.controls is not None:
    template["controls"] = {str(i): x for i, x in enumerate(jax.tree.leaves(rounds.controls))}
  got = ckpt.restore_latest(template)
  if got is None:
    return None
  step, tree, extra = got
  leaves = [jnp.asarray(tree["state"][str(i)]) for i in range(len(template["state"]))]
  state = jax.tree.unflatten(jax.tree.structure(state), leaves)
  if rounds.controls is not None:
    c = [np.array(tree["controls"][str(i)]) for i in range(len(template["controls"]))]
    rounds.controls = jax.tree.unflatten(jax.tree.structure(rounds.controls), c)
  return step, state, extra


def _plot(workdir: pathlib.Path, curve: list[tuple[int, float]], name: str, title: str) -> None:
  """``plots/eval_curve.png``: the eval metric per round (integer round ticks)."""
  if not distributed.is_main_process():  # Process 0 writes the run contract.
    return
  plots.line_plot(
    workdir / "plots" / "eval_curve.png",
    {name: ([c[0] for c in curve], [c[1] for c in curve])},
    xlabel="round",
    ylabel=f"eval {name}",
    title=title,
    integer_x=True,
  )


def _dp_ledger(config, dp_cfg, rounds, pop, fingerprint) -> ledger_lib.PrivacyLedger:
  """The run's privacy ledger: user-level records of each round, the run's secret."""
  full = np.array([len(x) for x in pop.partition.indices["train"]])
  static = rounds.dp_record(full)

  def plan(r: int) -> ledger_lib.StepRecord:
    return rounds.records.get(r, static)

  secret = rng_lib.SecretStreams.for_run(dp_cfg.noise_seed)
  return ledger_lib.PrivacyLedger(
    aggregator=dp_lib.aggregator(dp_cfg),
    plan_fn=plan,
    delta=dp_cfg.delta,
    accountant=dp_cfg.accountant,
    max_steps=int(config.federated.rounds),
    secret=secret,
    noise_seed_fixed=dp_cfg.noise_seed is not None,
    release_unsafe_stats=dp_cfg.release_unsafe_stats,
    fingerprint=fingerprint,
    config=workdir_lib.config_dict(config),
    extra_summary={
      "privacy/adaptive_clipping": dp_cfg.adaptive,
      "privacy/weight_cap": dp_cfg.weight_cap,
      "privacy/cohort_mode": dp_cfg.cohort_mode,
    },
  )


def _released(metrics: dict[str, float], dp_cfg: dp_lib.DpConfig) -> dict[str, float]:
  """The round metrics a DP run may write: unsafe/* only with release_unsafe_stats."""
  if dp_cfg.release_unsafe_stats:
    return dict(metrics)
  return {k: v for k, v in metrics.items() if not k.startswith("unsafe/")}


def run(
  config: Any, workdir: str | os.PathLike, *, stop_after_round: int | None = None
) -> dict[str, Any]:
  """Runs (or resumes) a federated experiment.

  Args:
    config: a config from ``configs/fed_*.py`` (spine sections + ``partition``, ``selection``,
      ``algorithm``, ``federated``, ``continual``, ``dp``).
    workdir: run directory.
    stop_after_round: simulate preemption: checkpoint and return after this many rounds.

  Returns:
    The flat summary: ``fed/rounds``, ``fed/clients_per_round``, ``eval/accuracy`` or
    ``eval/perplexity``, ``eval/loss``, ``privacy/epsilon`` (with DP), ``partition/*``,
    ``continual/*`` (continual setting), ``train/wall_seconds``.

  Raises:
    ConfigError: for invalid configs, before any compute.
  """
  population.validate_config(config)
  spine.validate_spine(config, population.SECTIONS)
  f = config.federated
  if f.centralized:
    from trustml.train import loop  # pylint: disable=g-import-not-at-top

    summary = loop.train(config, workdir, extra_sections=population.SECTIONS)
    summary["fed/centralized"] = True
    writers.write_summary(workdir, summary)
    return summary
  dp_cfg = _dp_config(config)
  workdir_lib.check(workdir, config)  # A workdir holding a different run: refused, untouched.
  workdir = pathlib.Path(workdir)
  prepared = spine.prepare(config, workdir)
  model, seed = prepared.model, int(config.seed)
  pop = population.build(config, prepared.train, prepared.eval)
  sampler = selection.Sampler(
    config.selection.sampler,
    config.selection.num_clients_per_round,
    config.selection.beta,
    config.selection.mode,
  )
  sampler.validate(pop.num_clients)
  n_dev = f.num_devices or jax.device_count()
  if n_dev > jax.device_count():
    raise validation.ConfigError(
      f"federated.num_devices={n_dev} is invalid: only {jax.device_count()} devices"
    )
  mesh = round_lib.make_mesh(n_dev) if n_dev > 1 else None
  dropout = float(config.model.get("dropout_rate", 0.0)) > 0
  alg = algorithms.from_config(model, config.algorithm, mesh=mesh, dp=dp_cfg, dropout=dropout)
  example = batching.take_padded(prepared.train, np.arange(2), 2)
  params = model.init(rng_lib.RngStreams(seed).stream("params"), example)
  rounds = _Rounds(config, model, prepared.train, pop, alg, mesh, dp_cfg)
  ckpt = checkpoint.Checkpointer(workdir)
  fingerprint = workdir_lib.fingerprint(config)
  if dp_cfg is not None:
    validation.warn_large_delta("dp.delta", dp_cfg.delta, pop.num_clients, "users")
    rounds.ledger = _dp_ledger(config, dp_cfg, rounds, pop, fingerprint)
  stored = workdir_lib.checked_extra(ckpt, workdir, config)  # Refuses another config's run.
  if rounds.ledger is not None and "ledger" in stored:
    rounds.ledger.load_state_dict(stored["ledger"])
  workdir_lib.claim(workdir, config)
  key_data = rounds.ledger.secret.key_data("fed_dp_noise") if rounds.ledger is not None else None
  state = alg.init(params, key_data) if dp_cfg is not None else alg.init(params)
  rounds.init_controls(params)

  metric = _metric_name(model)
  ebs = int(config.train.eval_batch_size)
  train_rows = list(pop.partition.indices["train"])
  test_rows = list(pop.partition.indices["test"])
  eval_all = (
    _subset(prepared.eval, np.sort(np.concatenate(test_rows)))
    if sum(map(len, test_rows))
    else prepared.eval
  )
  continual_mode = f.setting == "continual"
  if continual_mode:
    c = config.continual
    t_periods = c.num_periods
    arrivals = continual.arrival_periods(train_rows, t_periods, process=c.process, seed=seed)
    test_periods = continual.arrival_periods(test_rows, t_periods, process="sequential", seed=seed)
    storage = continual.Storage(pop.num_clients, c.storage_cap, c.deletion_policy, seed=seed)
    rounds_per_period = f.rounds // t_periods
    eval_sets = [
      _subset(prepared.eval, continual.rows_in_periods(test_rows, test_periods, [t]))
      for t in range(t_periods)
    ]

  extra: dict[str, Any] = {
    "curve": [],
    "clients": [],
    "period_matrix": [],
    "wall_seconds": 0.0,
    "truncated": 0,
  }
  r0 = 0
  restored = _restore(ckpt, state, rounds)
  if restored is not None:
    r0, state, extra = restored
    rounds.truncated = int(extra.get("truncated", 0))
    if continual_mode:
      storage.load_state_dict(extra["storage"])
    logging.info("Resumed %s from round %d", workdir, r0)
  writer = writers.MetricWriter(workdir)
  t0 = time.perf_counter()

  def checkpoint_extra():
    e = dict(
      extra,
      wall_seconds=extra["wall_seconds"] + time.perf_counter() - t0,
      truncated=rounds.truncated,
      config=workdir_lib.config_dict(config),
      config_fingerprint=fingerprint,
    )
    if rounds.ledger is not None:
      e["ledger"] = rounds.ledger.state_dict()
    if continual_mode:
      e["storage"] = storage.state_dict()
    return e

  for r in range(r0, f.rounds):
    if continual_mode:
      period = r // rounds_per_period
      if r % rounds_per_period == 0:
        arrived = storage.ingest(train_rows, arrivals, period)
        writer.write(
          r, "continual", period=period, arrived=arrived, stored=int(storage.sizes().sum())
        )
      pool = storage.rows()
    else:
      pool = train_rows
    state, m = rounds.run(state, pool, r)
    if rounds.ledger is not None:
      rounds.ledger.record(r, m)
      m = _released(m, dp_cfg)
      m.update(rounds.ledger.progress())
    if "fed/clients_sampled" in m:
      extra["clients"].append(m["fed/clients_sampled"])
    writer.write(r + 1, "train", **m)
    last = r + 1 == f.rounds
    if (f.eval_every and (r + 1) % f.eval_every == 0) or last:
      ev = evaluate.evaluate(model, state.params, eval_all, ebs)
      writer.write(r + 1, "eval", **ev)
      extra["curve"].append([r + 1, ev[metric]])
      logging.info("round %d/%d eval %s %.4f", r + 1, f.rounds, metric, ev[metric])
    if continual_mode and (r + 1) % rounds_per_period == 0:
      row = [
        evaluate.evaluate(model, state.params, es, ebs)[metric]
        if len(es["tokens"])
        else float("nan")
        for es in eval_sets
      ]
      extra["period_matrix"].append(row)
      writer.write(
        r + 1,
        "continual_eval",
        period=period,
        **{f"period_{t}/{metric}": v for t, v in enumerate(row)},
      )
    saved = (f.checkpoint_every and (r + 1) % f.checkpoint_every == 0) or last
    if saved:
      _save(ckpt, r + 1, state, rounds, checkpoint_extra())
    if stop_after_round is not None and r + 1 >= stop_after_round and not last:
      if not saved:
        _save(ckpt, r + 1, state, rounds, checkpoint_extra())
      writer.close()
      ckpt.close()
      return {"fed/interrupted_at": r + 1}
  wall = extra["wall_seconds"] + time.perf_counter() - t0
  final = evaluate.evaluate(model, state.params, eval_all, ebs)
  summary: dict[str, Any] = {f"eval/{k}": v for k, v in final.items()}
  summary.update(
    {
      "fed/rounds": f.rounds,
      "fed/clients_per_round": float(np.mean(extra["clients"])) if extra["clients"] else 0.0,
      "fed/population": pop.num_clients,
      "fed/algorithm": config.algorithm.name,
      "fed/sampler": config.selection.sampler,
      "fed/weighting": config.selection.weighting if dp_cfg is None else "capped",
      "fed/setting": f.setting,
      "fed/partition": config.partition.kind,
      "fed/num_devices": n_dev,
      "fed/poisson_truncated_rounds": rounds.truncated,
      "fed/eval_curve": extra["curve"],
      "train/wall_seconds": wall,
      "data/name": config.data.name,
      "model/name": model.name,
    }
  )
  summary.update({f"partition/{k}": v for k, v in pop.stats.items() if not isinstance(v, dict)})
  if config.partition.kind in ("dirichlet", "cluster"):
    summary["partition/alpha"] = float(config.partition.alpha)
  if dp_cfg is not None:
    summary.update(rounds.ledger.summary())
    summary["privacy/delta"] = dp_cfg.delta
    if not dp_cfg.release_unsafe_stats:  # Realised cohort sizes and truncations are private.
      for key in ("fed/clients_per_round", "fed/poisson_truncated_rounds"):
        summary.pop(key, None)
    summary["fed/expected_clients_per_round"] = float(config.selection.num_clients_per_round)
  if continual_mode and extra["period_matrix"]:
    summary.update(_continual_summary(np.asarray(extra["period_matrix"], dtype=np.float64), metric))
  writers.write_summary(workdir, summary)
  _plot(
    workdir,
    extra["curve"],
    metric,
    f"{config.algorithm.name} {config.selection.sampler} {f.setting} ({config.data.name})",
  )
  writer.close()
  ckpt.close()
  return summary


def _continual_summary(mat: np.ndarray, metric: str) -> dict[str, float]:
  """Forward and forgetting figures from ``mat[t, p]`` = metric on period ``p`` after period ``t``."""
  sign = -1.0 if metric == "perplexity" else 1.0  # "better" direction
  t = mat.shape[0]
  forward = [mat[i, i + 1] for i in range(t - 1)]
  # Forgetting of period p: how much worse the final value is than the best earlier one
  # (max accuracy - final, or final - min perplexity); negative = still improving.
  forgetting = [np.nanmax(sign * mat[p:-1, p]) - sign * mat[-1, p] for p in range(t - 1)]
  return {
    f"continual/forward_{metric}": float(np.nanmean(forward)) if forward else float("nan"),
    f"continual/forgetting_{metric}": float(np.nanmean(forgetting)) if forgetting else 0.0,
    f"continual/final_mean_{metric}": float(np.nanmean(mat[-1])),
  }


__all__ = ["run"]
