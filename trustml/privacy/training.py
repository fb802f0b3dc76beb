"""DP training from a config: ``run(config, workdir) -> summary`` (called by ``launch/train.py``).

Composes the spine's loop (:func:`trustml.train.loop.train`) with the privacy engine: a DP
gradient function (:mod:`~trustml.privacy.mechanism`), a sampler
(:mod:`~trustml.privacy.sampling`) and the ledger (:mod:`~trustml.privacy.ledger`) stored in
every checkpoint. ``summary.json`` gains the ``privacy/...`` keys of
:meth:`trustml.privacy.ledger.PrivacyLedger.summary` plus ``privacy/mechanism`` and
``privacy/clipping``.
"""

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from trustml.core import validation
from trustml.data import batching
from trustml.privacy import config as privacy_config
from trustml.privacy import ghost, mechanism, sampling
from trustml.train import config as train_config
from trustml.train import experiment, loop
from trustml.train import workdir as workdir_lib


def _planned_steps(train: Any, n: int):
  def fn(logical: int) -> int:
    return train_config.num_train_steps({**train, "batch_size": int(logical)}, n)

  return fn


def _ghost_coverage(prepared: experiment.Prepared, rows: int) -> dict[str, Any]:
  """eDP-SGD's rule coverage of the model on a ``rows``-row micro-batch; where leaves take the
  per-example fallback, its cost measured on a synthetic batch (zeros: no private data) and
  logged as a warning. Summary keys ``privacy/ghost_residual_leaves`` and, with a fallback,
  ``privacy/ghost_fallback`` (``edp_step_s``, ``plain_step_s``, ``ratio``, ``copies_mb``)."""
  batch = batching.take_padded(prepared.train, np.zeros(0, np.int64), rows)
  batch["weight"][:] = 1.0  # Timing only: shapes decide the cost, not the values.
  if "mask" in batch:
    batch["mask"][:] = True
  batch = {k: v for k, v in batch.items() if k != "index"}
  model = prepared.model
  key = jax.random.key(0)
  shapes = jax.eval_shape(model.init, key, batch)  # The plan needs shapes only.
  if not ghost.plan(model.per_example_loss, shapes, batch).uncovered:
    return {"privacy/ghost_residual_leaves": []}
  cost = ghost.fallback_cost(model.per_example_loss, model.init(key, batch), batch)
  out: dict[str, Any] = {"privacy/ghost_residual_leaves": cost["leaves"]}
  if cost["leaves"]:
    out["privacy/ghost_fallback"] = {k: v for k, v in cost.items() if k != "leaves"}
    logging.warning(
      "eDP-SGD: %d parameter leaves have no ghost-norm rule (%s) and take the per-example "
      "fallback (exact; %.1f MB of per-example copies). Measured on a %d-row micro-batch: "
      "eDP step %.1f ms against %.1f ms for the plain gradient (%.2fx).",
      len(cost["leaves"]),
      ", ".join(cost["leaves"]),
      cost["copies_mb"],
      rows,
      cost["edp_step_s"] * 1e3,
      cost["plain_step_s"] * 1e3,
      cost["ratio"],
    )
  return out


def build(
  config: Any, prepared: experiment.Prepared, *, num_data_shards: int | None = None
) -> tuple[Any, Any, Any, Any]:
  """Builds ``(resolved, dp_sgd, batch_fn, ledger)`` for a DP run.

  The ledger holds the run's secret streams (fresh OS entropy, or ``privacy.noise_seed``);
  the Poisson coins of ``batch_fn`` and the noise key of the DP transformation derive from it.
  When the loop restores a checkpoint, the ledger's stored secret replaces the fresh one and
  the train state's DP key is restored with it, so a resumed run draws the same numbers.

  Args:
    config: the full config (``privacy`` with mechanism != 'none').
    prepared: data and model.
    num_data_shards: devices the global batch is split over (the Poisson cap is a multiple of
      it times the physical batch); default: the ``data`` axis of the config's ``mesh``.

  Returns:
    The resolved numbers, the :class:`~trustml.privacy.mechanism.DpSgd` transformation (the
    loop's stateful gradient function), the batch function and the ledger.
  """
  n = batching.num_examples(prepared.train)
  if num_data_shards is None:
    num_data_shards = train_config.num_data_shards(config)
  res = privacy_config.resolve(
    config.privacy,
    config.train,
    n,
    _planned_steps(config.train, n),
    num_data_shards=num_data_shards,
  )
  extra = {
    "privacy/mechanism": res.mechanism,
    "privacy/clipping": res.clipping,
    "privacy/logical_batch_size": res.logical_batch_size,
    "privacy/batch_rows": res.batch_rows,
    "privacy/adaptive_clipping": res.adaptive,
    "privacy/count_noise_multiplier": res.count_noise_multiplier,
    "privacy/skip_padding": res.skip_padding,
  }
  if res.mechanism == "edp_sgd":
    extra.update(_ghost_coverage(prepared, res.physical_batch_size or res.batch_rows))
  if res.skip_padding:
    extra["privacy/timing_note"] = (
      "privacy.skip_padding is on: step times (and train/wall_seconds) grow with "
      "ceil(|B_t| / train.batch_size), which the epsilon does not cover"
    )
  led = res.ledger(
    fingerprint=workdir_lib.fingerprint(config),
    config=workdir_lib.config_dict(config),
    extra_summary=extra,
  )
  if res.sampling == "poisson":

    def batch_fn(step: int) -> dict[str, np.ndarray]:
      # Read the secret at call time: a restored checkpoint replaces the ledger's secret.
      return sampling.poisson_batch(
        prepared.train,
        res.sampling_rate,
        res.batch_rows,
        led.secret,
        step,
        num_blocks=num_data_shards if res.skip_padding else 1,
      )
  else:

    def batch_fn(step: int) -> dict[str, np.ndarray]:
      return sampling.shuffle_batch(prepared.train, res.logical_batch_size, led.secret, step)

  # The key of a fresh run; on resume the checkpointed train state (and ledger) replace both.
  dp = mechanism.dp_sgd(
    prepared.model.per_example_loss,
    mechanism=res.mechanism,
    l2_clip_norm=res.l2_clip_norm,
    noise_multiplier=res.schedule,
    normaliser=float(res.logical_batch_size),  # Expected (Poisson) or fixed (shuffle) size.
    key_data=led.secret.key_data("dp_noise"),
    sampling=res.sampling,
    physical_batch_size=res.physical_batch_size,
    clipping=res.clipping,
    adaptive=(
      mechanism.AdaptiveClipping(
        float(config.privacy.target_quantile),
        float(config.privacy.clip_learning_rate),
        res.count_noise_multiplier,
      )
      if res.adaptive
      else None
    ),
    release_unsafe_stats=res.release_unsafe_stats,
    num_data_shards=num_data_shards,
    skip_padding=res.skip_padding,
  )
  return res, dp, batch_fn, led


def run(
  config: Any,
  workdir: str | os.PathLike,
  *,
  prepared: experiment.Prepared | None = None,
  **fit_kwargs: Any,
) -> dict[str, Any]:
  """Trains with DP-SGD / eDP-SGD as configured and returns the summary.

  Args:
    config: ConfigDict as in ``configs/dp_nlu.py`` (``privacy.mechanism`` != ``'none'``).
    workdir: run directory; rerunning on it with the same config resumes exactly (ledger and
      secret included); with a different config it is refused before anything is written.
    prepared: reuse already prepared data and model (e.g. your own arrays and Model).
    **fit_kwargs: passed to :func:`trustml.train.loop.fit` (e.g. ``stop_after_step``).

  Returns:
    The summary dict (also written to ``summary.json``).

  Raises:
    ConfigError: for invalid configs or a workdir holding another run, before any compute.

  Formal guarantees:
    The reported ``privacy/epsilon`` bounds the (ε, δ)-DP of the released parameters (and all
    intermediate ones, and the adaptive clip norm) with respect to the training split under
    the neighbouring relation of ``privacy.sampling`` (example-level: add/remove one example
    for Poisson, replace one for shuffle), with total δ ``privacy/total_delta``; it is
    composed from the ledger's records of what each step ran. The noise and sampling coins
    come from a secret that no written file holds outside ``checkpoints/`` (unless
    ``privacy.noise_seed`` is set, which ``summary.json`` then says). Not covered: the
    tokenizer vocabulary and data-dependent preprocessing are built from the training text
    without DP; ``data/num_train`` (N is treated as public); evaluation metrics on the eval
    split; user-level privacy; with ``release_unsafe_stats`` the exact statistics it writes
    (``privacy/covered_by_epsilon`` is then false).
  """
  validation.one_of("privacy.mechanism", config.privacy.mechanism, mechanism.MECHANISMS[1:])
  privacy_config.validate_privacy(config.privacy, int(config.train.batch_size))
  experiment.validate_spine(config, ("privacy",))
  workdir_lib.check(workdir, config)
  prepared = prepared or experiment.prepare(config, workdir)
  res, dp, batch_fn, led = build(config, prepared)
  logging.info(
    "DP run: %s, q=%.5f, logical batch %d (rows %d), sigma=%.4f (accounted %.4f), C=%s, "
    "%d steps planned",
    res.mechanism,
    res.sampling_rate,
    res.logical_batch_size,
    res.batch_rows,
    res.noise_multiplier,
    res.accounted_sigma(0),
    res.l2_clip_norm,
    res.num_steps,
  )
  if res.noise_seed is not None:
    logging.warning(
      "privacy.noise_seed is set: the noise is reproducible, and the guarantee assumes the "
      "seed stays secret"
    )
  return loop.train(
    config,
    workdir,
    prepared=prepared,
    grad_fn=dp,
    batch_fn=batch_fn,
    ledger=led,
    total_steps=res.num_steps,
    **fit_kwargs,
  )


__all__ = ["build", "run"]
