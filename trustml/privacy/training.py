"""DP training from a config: ``run(config, workdir) -> summary`` (called by ``launch/train.py``).

Composes the spine's loop (:func:`trustml.train.loop.train`) with the privacy engine: a DP
gradient function (:mod:`~trustml.privacy.mechanism`), a sampler
(:mod:`~trustml.privacy.sampling`) and the ledger (:mod:`~trustml.privacy.ledger`) stored in
every checkpoint. ``summary.json`` gains the ``privacy/...`` keys of
:meth:`trustml.privacy.ledger.PrivacyLedger.summary` plus ``privacy/mechanism`` and
``privacy/clipping``.
"""

import logging
import os
from typing import Any

import numpy as np

from trustml.core import validation
from trustml.data import batching
from trustml.privacy import adaptive, mechanism, sampling
from trustml.privacy import config as privacy_config
from trustml.privacy import ledger as ledger_lib
from trustml.train import config as train_config
from trustml.train import experiment, loop


def _planned_steps(train: Any, n: int):
  def fn(logical: int) -> int:
    return train_config.num_train_steps({**train, "batch_size": int(logical)}, n)

  return fn


def build(config: Any, prepared: experiment.Prepared) -> tuple[Any, Any, Any, Any]:
  """Builds ``(resolved, grad_fn, batch_fn, ledger)`` for a DP run.

  Args:
    config: the full config (``privacy`` with mechanism != 'none').
    prepared: data and model.

  Returns:
    The resolved numbers, the loop plug-ins and the ledger.
  """
  n = batching.num_examples(prepared.train)
  res = privacy_config.resolve(config.privacy, config.train, n, _planned_steps(config.train, n))
  seed = int(config.seed)
  if res.sampling == "poisson":
    base_fn = sampling.poisson_batch_fn(prepared.train, res.sampling_rate, res.batch_rows, seed)
  else:
    base_fn = sampling.shuffle_batch_fn(prepared.train, res.logical_batch_size, seed)
  led = ledger_lib.PrivacyLedger(
    sampling=res.sampling,
    sampling_rate=res.sampling_rate,
    delta=res.delta,
    noise_fn=res.accounted_sigma,
    accountant=res.accountant,
    conversion=res.conversion,
    dataset_size=n,
    target_epsilon=res.target_epsilon,
    max_steps=res.num_steps,
    truncation_prob=res.truncation_prob,
    clip_update_fn=(
      adaptive.clip_update_fn(
        float(config.privacy.target_quantile), float(config.privacy.clip_learning_rate)
      )
      if res.adaptive
      else None
    ),
    initial_clip_norm=res.l2_clip_norm,
    extra_summary={
      "privacy/mechanism": res.mechanism,
      "privacy/clipping": res.clipping,
      "privacy/logical_batch_size": res.logical_batch_size,
      "privacy/batch_rows": res.batch_rows,
      "privacy/adaptive_clipping": res.adaptive,
      "privacy/count_noise_multiplier": res.count_noise_multiplier,
    },
  )

  def batch_fn(step: int) -> dict[str, np.ndarray]:
    batch = base_fn(step)
    batch["dp_l2_clip_norm"] = np.float32(led.clip_norm)
    batch["dp_noise_multiplier"] = np.float32(res.grad_sigma(step))
    return batch

  normaliser = float(res.logical_batch_size)  # Expected size (Poisson) or fixed size (shuffle).
  grad_fn = mechanism.make_grad_fn(
    prepared.model,
    mechanism=res.mechanism,
    l2_clip_norm=res.l2_clip_norm,
    noise_multiplier=res.grad_sigma(0),
    normaliser=normaliser,
    physical_batch_size=res.physical_batch_size,
    clipping=res.clipping,
    count_noise_multiplier=res.count_noise_multiplier,
  )
  return res, grad_fn, batch_fn, led


def run(config: Any, workdir: str | os.PathLike, **fit_kwargs: Any) -> dict[str, Any]:
  """Trains with DP-SGD / eDP-SGD as configured and returns the summary.

  Args:
    config: ConfigDict as in ``configs/dp_nlu.py`` (``privacy.mechanism`` != ``'none'``).
    workdir: run directory; rerunning on it resumes exactly (ledger included).
    **fit_kwargs: passed to :func:`trustml.train.loop.fit` (e.g. ``stop_after_step``).

  Returns:
    The summary dict (also written to ``summary.json``).

  Raises:
    ConfigError: for invalid configs, before any compute.

  Formal guarantees:
    The reported ``privacy/epsilon`` bounds the (ε, δ)-DP of the released parameters (and all
    intermediate ones) with respect to the training split under the neighbouring relation of
    ``privacy.sampling`` (example-level: add/remove one example for Poisson, replace one for
    shuffle), with total δ ``privacy/total_delta``. Not covered: the tokenizer vocabulary and
    data-dependent preprocessing are built from the training text without DP; evaluation
    metrics on the eval split; user-level privacy.
  """
  validation.one_of("privacy.mechanism", config.privacy.mechanism, mechanism.MECHANISMS[1:])
  privacy_config.validate(config.privacy, int(config.train.batch_size))
  experiment.validate_spine(config, ("privacy",))
  prepared = experiment.prepare(config, workdir)
  res, grad_fn, batch_fn, led = build(config, prepared)
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.train.num_epochs = 0.0
    cfg.train.num_steps = res.num_steps
  logging.info(
    "DP run: %s, q=%.5f, logical batch %d (rows %d), sigma=%.4f, C=%s, %d steps planned",
    res.mechanism,
    res.sampling_rate,
    res.logical_batch_size,
    res.batch_rows,
    res.noise_multiplier,
    res.l2_clip_norm,
    res.num_steps,
  )
  return loop.train(
    cfg, workdir, prepared=prepared, grad_fn=grad_fn, batch_fn=batch_fn, ledger=led, **fit_kwargs
  )


__all__ = ["build", "run"]
