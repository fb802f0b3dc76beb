"""DP-SGD / eDP-SGD NLU training: configs/nlu.py plus a ``privacy`` section.

Launch:
  python -m launch.train --config=configs/dp_nlu.py --workdir=/tmp/dp
  python -m launch.train --config=configs/dp_nlu.py:data=snips,eps=3 --workdir=/tmp/dp_snips
  python -m launch.train --config=configs/dp_nlu.py:smoke --workdir=/tmp/dp_smoke

Args (comma-separated after ``:``):
  data: synthetic | snips | sst2 | imdb | civil_comments | hatexplain (default synthetic).
  model: bag | cnn | transformer (default bag).
  eps: target ε (default 3.0); σ is calibrated for the planned steps.
  clip: per-example L2 clip norm C, or ``auto`` for adaptive quantile clipping (default per model).
  mechanism: edp_sgd | dp_sgd (default edp_sgd).
  smoke: shrink everything for a seconds-long run.
  seed: root seed.
"""

import ml_collections

from trustml.configs import nlu
from trustml.core import config_args, validation
from trustml.privacy import config as privacy_config

# DP training settings per model: (physical batch, logical batch, epochs, learning rate, clip).
_DP_TRAIN = {
  "bag": (256, 1024, 30.0, 2e-2, 1.0),
  "cnn": (256, 1024, 20.0, 5e-3, 1.0),
  "transformer": (128, 1024, 15.0, 2e-3, 1.0),
}


DP_ARGS = dict(eps=3.0, clip="", mechanism="edp_sgd")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the DP NLU config for ``arg`` (see module docstring)."""
  a = config_args.parse_common(arg, **DP_ARGS)
  return add_privacy(nlu.build(a), a)


def add_privacy(config: ml_collections.ConfigDict, a: ml_collections.ConfigDict):
  """Switches a base config to DP training: DP optimisation settings and the ``privacy`` section.

  Args:
    config: a config from :func:`trustml.configs.nlu.build` (changed in place).
    a: parsed args with ``model``, ``smoke`` and ``eps`` (``clip``, ``mechanism`` optional).

  Returns:
    ``config``.
  """
  physical, logical, epochs, lr, clip = _DP_TRAIN[a.model]
  # Optimisation for DP: large logical batches, more epochs, constant-after-warm-up lr.
  config.train.batch_size = physical  # Physical micro-batch (memory bound).
  config.train.num_epochs = epochs  # Epochs over the training split (steps = epochs·N/logical).
  config.train.learning_rate = lr  # Adam(W) peak learning rate.
  config.train.warmup_steps = 10  # Linear warm-up steps.
  config.train.log_every = 10  # Log train loss every N steps.
  config.train.checkpoint_every = 50  # Checkpoint (with the privacy ledger) every N steps.
  config.privacy = privacy_config.default_privacy_config(
    mechanism=a.get("mechanism", "edp_sgd"),  # none | dp_sgd | edp_sgd.
    l2_clip_norm=_clip(
      a.get("clip", ""), clip
    ),  # Per-example L2 clip norm C (or 'auto' for quantile clipping).
    noise_multiplier=None,  # σ; None: calibrated from target_epsilon for the planned steps.
    target_epsilon=a.eps,  # ε budget; the run never takes a step that would exceed it.
    delta=1e-5,  # δ.
    sampling="poisson",  # poisson (add/remove-one) | shuffle (replace-one).
    accountant="rdp",  # rdp | pld (dp_accounting).
    rdp_conversion="improved",  # improved (dp_accounting) | classic (Mironov 2017).
    virtual_batch_size=logical,  # Expected logical batch; a multiple of train.batch_size.
    clipping="flat",  # flat | per_layer (equal split C/sqrt(L)).
    initial_l2_clip_norm=1.0,  # Starting C when l2_clip_norm='auto'.
    target_quantile=0.5,  # Adaptive clipping: target quantile of per-example norms.
    clip_learning_rate=0.2,  # Adaptive clipping: geometric step size.
    count_noise_multiplier=0.0,  # Adaptive clipping: σ_b of the count (0: logical/20).
    noise_schedule="constant",  # constant | exp_decay.
    noise_decay=1.0,  # exp_decay: σ multiplier per epoch.
    truncation_budget=1e-3,  # Poisson cap: run-wide P(truncation) ≤ this fraction of δ.
  )
  if a.smoke:
    config.train.batch_size = 16
    config.train.num_epochs = 0.0
    config.train.num_steps = 4
    config.train.warmup_steps = 1
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    config.privacy.virtual_batch_size = 32
  return config


def _clip(arg: str, default: float) -> float | str:
  if not arg:
    return default
  if arg == "auto":
    return "auto"
  try:
    return float(arg)
  except ValueError:
    raise validation.ConfigError(f"config arg clip={arg!r} is invalid: a number or auto") from None


def get_sweep(arg: str | None = None) -> list[dict]:
  """ε x mechanism sweep (for launch/sweep.py)."""
  a = config_args.parse_arg(arg, data="synthetic")
  return [
    {"name": f"{m}_eps{e:g}", "arg": f"data={a.data},mechanism={m},eps={e}"}
    for m in ("edp_sgd", "dp_sgd")
    for e in (1.0, 3.0, 8.0)
  ]
