"""The training loop: a jitted step with a pluggable gradient function, exact resume.

Determinism: the parameters come from ``RngStreams(seed).stream("params")``, the batch of step
``s`` from ``(seed, s)`` and the step key from ``RngStreams(seed).at("step", s)``. A checkpoint
holds ``(step, params, opt_state)`` and a JSON side-car (the privacy ledger, wall time), so a
run interrupted and resumed on the same workdir ends bit-identical to an uninterrupted one.

Plug-ins (the privacy engine uses all three):

* ``grad_fn(params, batch, key) -> (direction, aux)``: the update direction fed to optax
  (default: mean gradient of the weighted per-example loss) and scalar diagnostics; or a
  *stateful* gradient mechanism (:class:`StatefulGradFn`: ``init(params) -> grad_state`` and
  ``__call__(params, batch, key, grad_state) -> (direction, aux, grad_state)``), whose state
  (the DP noise key, σ_t, C_t) lives in :class:`TrainState` and in every checkpoint.
* ``batch_fn(step) -> batch``: host NumPy batch of fixed shape (default: shuffled batches).
  A custom objective (e.g. knowledge distillation, whose loss needs a frozen teacher's
  logits) is a plain ``grad_fn`` closing over what it reads; ``train_metrics`` names the
  scalars of its ``aux`` to log, and a caller that brings its own data passes ``prepared``
  with ``"data"`` in ``extra_sections`` (its ``data`` section is then not a spine source).
* ``ledger``: ``state_dict()``, ``load_state_dict(d)``, ``can_step(step) -> (ok, reason)``,
  ``record(step, aux)``, ``summary() -> dict``, ``progress() -> dict`` (logged every
  ``log_every`` steps: ε so far); stored in every checkpoint.
"""

import dataclasses
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.data import batching
from trustml.models import contract
from trustml.train import checkpoint, evaluate, experiment, parallel, writers
from trustml.train import config as train_config
from trustml.train import workdir as workdir_lib

GradFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[Any, Mapping[str, jax.Array]]]


class Ledger(Protocol):
  """What the loop needs from a privacy ledger (or any per-step budget keeper)."""

  def state_dict(self) -> dict[str, Any]: ...

  def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

  def can_step(self, step: int) -> tuple[bool, str]: ...

  def record(self, step: int, aux: Mapping[str, Any]) -> None: ...

  def summary(self) -> dict[str, Any]: ...

  def progress(self) -> dict[str, Any]: ...


class StatefulGradFn(Protocol):
  """A gradient mechanism with state of its own (e.g. DP-SGD's noise key, σ_t and C_t)."""

  def init(self, params: Any) -> Any: ...

  def __call__(
    self, params: Any, batch: Mapping[str, jax.Array], key: jax.Array, grad_state: Any
  ) -> tuple[Any, Mapping[str, jax.Array], Any]: ...


class TrainState(NamedTuple):
  """State of a run (all of it is checkpointed).

  Attributes:
    step: int32 steps taken.
    params: model parameters.
    opt_state: optax state.
    grad_state: the gradient mechanism's state (``()`` for the plain mean gradient).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  grad_state: Any = ()


def _stateful(grad_fn: Any) -> StatefulGradFn:
  """Wraps a plain ``grad_fn(params, batch, key)`` as a stateless :class:`StatefulGradFn`."""
  if hasattr(grad_fn, "init"):
    return grad_fn

  class _Plain:
    def init(self, params):
      del params
      return ()

    def __call__(self, params, batch, key, grad_state):
      direction, aux = grad_fn(params, batch, key)
      return direction, aux, grad_state

  return _Plain()


@dataclasses.dataclass
class Outcome:
  """What :func:`fit` returns: the summary, final state and the prepared data/model."""

  summary: dict[str, Any]
  state: TrainState
  prepared: experiment.Prepared


def mean_loss_grad_fn(model: contract.Model) -> GradFn:
  """The non-private gradient: mean of the weighted per-example losses over real examples.

  Args:
    model: the Model.

  Returns:
    ``grad_fn(params, batch, key) -> (grads, {"loss": mean_loss})``.
  """

  def grad_fn(params, batch, key):
    def loss_fn(p):
      losses = model.per_example_loss(p, batch, rng_lib.named(key, "dropout"))
      return losses.sum() / jnp.maximum(batch["weight"].sum(), 1.0)

    value, grads = jax.value_and_grad(loss_fn)(params)
    return grads, {"loss": value}

  return grad_fn


def make_train_step(
  grad_fn: GradFn | StatefulGradFn,
  optimizer: optax.GradientTransformation,
  seed: int,
  *,
  placement: parallel.DataParallel | None = None,
  state: TrainState | None = None,
  batch: Mapping[str, Any] | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Mapping[str, jax.Array]]]:
  """The jitted step ``(state, batch) -> (state, aux)`` (state donated).

  The step key (dropout) comes from the public ``seed``; a DP mechanism draws its noise from
  the secret key in ``state.grad_state``, never from this key.

  Args:
    grad_fn: the gradient function or stateful mechanism, written over the global batch.
    optimizer: the optax optimizer.
    seed: root seed (step keys).
    placement: jit with explicit shardings on this mesh (batch over ``data``, state
      replicated or FSDP); ``None``: plain ``jax.jit`` on the default device.
    state: a placed state (its shardings), needed with ``placement``.
    batch: an example host batch (its keys and ranks), needed with ``placement``.

  Returns:
    The jitted step.
  """
  streams = rng_lib.RngStreams(seed)
  mech = _stateful(grad_fn)

  def step_fn(state: TrainState, batch):
    key = streams.at("step", state.step)
    direction, aux, grad_state = mech(state.params, batch, key, state.grad_state)
    updates, opt_state = optimizer.update(direction, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state, grad_state), aux

  if placement is None:
    return jax.jit(step_fn, donate_argnums=0)
  return placement.jit_step(step_fn, state, batch)


def init_state(
  model: contract.Model,
  optimizer: optax.GradientTransformation,
  example_batch: Mapping[str, np.ndarray],
  seed: int,
  grad_fn: GradFn | StatefulGradFn | None = None,
  params: Any = None,
) -> TrainState:
  """Initial state: parameters from the ``params`` stream of ``seed`` (or ``params`` when
  given), the optimizer's and the mechanism's state."""
  if params is None:
    params = model.init(rng_lib.RngStreams(seed).stream("params"), example_batch)
  grad_state = _stateful(grad_fn).init(params) if grad_fn is not None else ()
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), grad_state)


def num_params(params: Any) -> int:
  """Number of scalar parameters."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def fit(
  config: Any,
  workdir: str | os.PathLike,
  *,
  prepared: experiment.Prepared | None = None,
  grad_fn: GradFn | None = None,
  batch_fn: Callable[[int], Mapping[str, np.ndarray]] | None = None,
  ledger: Ledger | None = None,
  extra_sections: tuple[str, ...] = (),
  stop_after_step: int | None = None,
  total_steps: int | None = None,
  train_metrics: tuple[str, ...] = ("loss",),
  init_params: Any = None,
) -> Outcome:
  """Trains (or resumes) a run described by ``config`` in ``workdir``.

  Args:
    config: ConfigDict with ``seed``, ``data``, ``text``, ``model``, ``train`` (and sections the
      caller validates itself, named in ``extra_sections``).
    workdir: run directory (config.json, metrics.jsonl, summary.json, checkpoints/).
    prepared: reuse already prepared data and model.
    grad_fn: replaces the non-private mean gradient (the DP engine plugs in here).
    batch_fn: replaces shuffled batches (Poisson sampling plugs in here).
    ledger: privacy ledger stored in checkpoints; may stop the run (budget stop).
    extra_sections: extra top-level config sections to accept (the caller validates them);
      ``"data"`` among them means the caller owns the data: ``prepared`` is then required.
    stop_after_step: simulate preemption: checkpoint and return after this many steps.
    total_steps: planned steps when the caller plans them (DP runs: epochs over the logical
      batch); default from the ``train`` section.
    train_metrics: scalars of the gradient function's ``aux`` averaged over each logging
      window and written as ``train`` events (names absent from ``aux`` are skipped: a DP
      run releases no exact training loss unless asked to).
    init_params: start from these parameters (a shared or pretrained initialisation, e.g.
      one init reused by several runs) instead of ``model.init`` on the ``params`` stream of
      ``config.seed``; a resumed run restores its checkpoint instead.

  Returns:
    The Outcome (summary, final state, prepared bundle).

  Raises:
    ConfigError: for invalid configs, before any compute.
  """
  experiment.validate_spine(config, ("privacy",) + tuple(extra_sections))
  if "data" in extra_sections and prepared is None:
    raise validation.ConfigError(
      "prepared=None is invalid: a run that owns its data section must pass its data"
    )
  workdir_lib.check(workdir, config)  # A workdir holding a different run: refused, untouched.
  workdir = pathlib.Path(workdir)
  prepared = prepared or experiment.prepare(config, workdir)
  model, train_arrays = prepared.model, prepared.train
  n = batching.num_examples(train_arrays)
  bs = int(config.train.batch_size)
  total = (
    int(total_steps) if total_steps is not None else train_config.num_train_steps(config.train, n)
  )
  optimizer = train_config.make_optimizer(config.train, total)
  seed = int(config.seed)
  if batch_fn is None:

    def batch_fn(step: int) -> Mapping[str, np.ndarray]:
      return batching.shuffled_batch(train_arrays, bs, seed, step)

  first_batch = batch_fn(0)
  placement = parallel.DataParallel.from_config(config)  # Mesh over all processes' devices.
  placement.check_rows(first_batch)  # Rows must split over the data shards: before compute.
  fingerprint = workdir_lib.fingerprint(config)
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=int(config.train.max_to_keep))
  stored = workdir_lib.checked_extra(ckpt, workdir, config)  # Before any state is restored.
  if ledger is not None and "ledger" in stored:
    ledger.load_state_dict(stored["ledger"])  # May refuse (fingerprint of the privacy setup).
  workdir_lib.claim(workdir, config)
  state = placement.init_state(
    lambda: init_state(model, optimizer, first_batch, seed, grad_fn, init_params)
  )
  wall_before = 0.0
  restored = ckpt.restore_latest(state)
  if restored is not None:
    step0, state, extra = restored
    wall_before = float(extra.get("wall_seconds", 0.0))
    logging.info("Resumed %s from step %d", workdir, step0)
  step_fn = make_train_step(
    grad_fn or mean_loss_grad_fn(model),
    optimizer,
    seed,
    placement=placement,
    state=state,
    batch=first_batch,
  )
  writer = writers.MetricWriter(workdir)
  start = int(state.step)
  t0 = time.perf_counter()
  t_compiled = t0
  window: list[Mapping[str, jax.Array]] = []
  stopped_reason = ""
  step = start
  log_every = int(config.train.log_every)
  eval_every = int(config.train.eval_every)
  ckpt_every = int(config.train.checkpoint_every)

  saved_step = -1

  def save(at_step: int) -> None:
    nonlocal saved_step
    if at_step == saved_step:  # Already saved at this step (e.g. checkpoint + preemption).
      return
    saved_step = at_step
    extra = {
      "wall_seconds": wall_before + time.perf_counter() - t0,
      "config": workdir_lib.config_dict(config),
      "config_fingerprint": fingerprint,
    }
    if ledger is not None:
      extra["ledger"] = ledger.state_dict()
    ckpt.save(at_step, state, extra)

  # The next step's batch is built while the device runs this one (the ledger's read of each
  # step's aux syncs the host): batch_fn(step) is a pure function of the step, so a batch built
  # for a step that never runs (budget stop, preemption) is dropped unused.
  next_batch = placement.place_batch(batch_fn(step)) if step < total else None
  while step < total:
    if ledger is not None:
      ok, reason = ledger.can_step(step)
      if not ok:
        stopped_reason = reason
        logging.warning("Stopping before step %d: %s", step, reason)
        break
    state, aux = step_fn(state, next_batch)
    step += 1
    next_batch = placement.place_batch(batch_fn(step)) if step < total else None
    if ledger is not None:
      ledger.record(step - 1, jax.device_get(aux))
    logged = {k: aux[k] for k in train_metrics if k in aux}  # No exact DP loss unless asked.
    if logged:
      window.append(logged)
    if step == start + 1:
      jax.block_until_ready(state.params)  # One sync, so the figure holds the first step.
      t_compiled = time.perf_counter()  # The first call compiles: the ETA leaves it out.
    if log_every and (step % log_every == 0 or step == total):
      now = time.perf_counter()
      rate = (step - start) / max(now - t0, 1e-9)
      steady = (step - start - 1) / max(now - t_compiled, 1e-9) if step > start + 1 else rate
      scalars: dict[str, Any] = {}
      for name in train_metrics:
        values = [w[name] for w in window if name in w]
        if values:
          scalars[name] = float(np.mean(jax.device_get(values)))
      window = []
      if ledger is not None:
        scalars.update(ledger.progress())  # ε spent so far, σ_t, C_t: DP or public values.
      writer.write(step, "train", steps_per_second=rate, **scalars)
      shown = "  ".join(f"{k} {v:.4g}" for k, v in scalars.items() if isinstance(v, float))
      logging.info(
        "step %d/%d  %s  %.2f steps/s  ETA %.0fs",
        step,
        total,
        shown,
        steady,
        (total - step) / max(steady, 1e-9),
      )
    if eval_every and step % eval_every == 0 and step < total:
      metrics = evaluate.evaluate(model, state.params, prepared.eval, config.train.eval_batch_size)
      writer.write(step, "eval", **metrics)
    if (ckpt_every and step % ckpt_every == 0) or step == total:
      save(step)
    if stop_after_step is not None and step >= stop_after_step and step < total:
      save(step)
      writer.close()
      ckpt.close()
      return Outcome({"train/interrupted_at": step}, placement.gathered(state), prepared)
  if stopped_reason:
    save(step)
  wall = wall_before + time.perf_counter() - t0
  metrics = evaluate.evaluate(model, state.params, prepared.eval, config.train.eval_batch_size)
  writer.write(step, "eval", **metrics)
  summary: dict[str, Any] = {f"eval/{k}": v for k, v in metrics.items()}
  summary.update(
    {
      "train/steps": step,
      "train/wall_seconds": wall,
      # This process's first step (compilation dominates it): 0 if no step ran here.
      "train/first_step_seconds": t_compiled - t0,
      "train/batch_size": bs,
      "data/name": config.data.get("name", None) or prepared.dataset.name,
      "data/num_train": n,
      "data/num_eval": batching.num_examples(prepared.eval),
      "model/name": model.name,
      "model/num_params": num_params(state.params),
      "train/num_devices": placement.mesh.size,
    }
  )
  if stopped_reason:
    summary["train/stopped_reason"] = stopped_reason
  if ledger is not None:
    summary.update(ledger.summary())
  writers.write_summary(workdir, summary)
  writer.close()
  ckpt.close()
  return Outcome(summary, placement.gathered(state), prepared)


def train(config: Any, workdir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
  """Runs :func:`fit` and returns only its summary (the function ``launch/train.py`` calls)."""
  return fit(config, workdir, **kwargs).summary


def load_params(config: Any, workdir: str | os.PathLike) -> tuple[Any, experiment.Prepared]:
  """Restores the newest parameters of a finished or interrupted run.

  Returns:
    ``(params, prepared)``.

  Raises:
    FileNotFoundError: if the workdir has no checkpoint.
  """
  prepared = experiment.prepare(config, workdir)
  n = batching.num_examples(prepared.train)
  optimizer = train_config.make_optimizer(
    config.train, train_config.num_train_steps(config.train, n)
  )
  example = batching.take_padded(prepared.train, np.arange(1), int(config.train.batch_size))
  template = init_state(prepared.model, optimizer, example, int(config.seed))
  ckpt = checkpoint.Checkpointer(workdir)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
  params = ckpt.restore_params(step, template.params)
  ckpt.close()
  return params, prepared


__all__ = [
  "GradFn",
  "Ledger",
  "Outcome",
  "StatefulGradFn",
  "TrainState",
  "fit",
  "init_state",
  "load_params",
  "make_train_step",
  "mean_loss_grad_fn",
  "num_params",
  "train",
]
