"""The ``privacy`` config section: defaults, validation before compute, and resolution.

Fields (``configs/dp_nlu.py`` sets them; ``configs/nlu.py`` only has ``mechanism='none'``):

* ``mechanism``: ``none`` | ``dp_sgd`` (naive vmap per-example gradients) | ``edp_sgd``
  (book-keeping ghost clipping; same guarantee, near non-private cost).
* ``l2_clip_norm``: C > 0, or ``'auto'`` for adaptive quantile clipping.
* ``noise_multiplier``: σ ≥ 0, or None to calibrate it from ``target_epsilon``.
* ``target_epsilon``: ε > 0 budget, or None. With σ given too, the run stops before exceeding it.
* ``delta``: δ in (0, 1).
* ``sampling``: ``poisson`` | ``shuffle`` (see :mod:`trustml.privacy.sampling`).
* ``accountant``: ``rdp`` | ``pld``; ``rdp_conversion``: ``improved`` | ``classic``.
* ``virtual_batch_size``: logical (expected) batch size; a multiple of ``train.batch_size``
  (the physical micro-batch); 0 means equal to it.
* ``clipping``: ``flat`` | ``per_layer`` (equal budget split C/sqrt(L) per parameter leaf).
* ``initial_l2_clip_norm``, ``target_quantile``, ``clip_learning_rate``,
  ``count_noise_multiplier`` (0 = expected batch / 20): adaptive clipping.
* ``noise_schedule``: ``constant`` | ``exp_decay`` (σ_t = σ·noise_decay^epoch).
* ``truncation_budget``: the Poisson cap keeps run-wide P(truncation) ≤ this fraction of δ.
* ``noise_seed``: None (default: the privacy randomness — noise and sampling coins — comes from
  OS entropy at the run's first start and is kept only in its checkpoint) or an int that fixes
  it for reproducible research (the run then says its guarantee assumes the seed is secret).
* ``skip_padding``: skip micro-batches of the Poisson cap that hold only padding rows (the
  sampler puts each device's real rows first). Same released update, less compute (the cap
  pads ~6 std of the batch size); the step time then reveals ⌈|B_t| / train.batch_size⌉,
  a timing side channel the ε does not cover. Off by default (constant-time steps).
* ``release_unsafe_stats``: also write exact statistics of the private training data (training
  loss on sampled batches, clipped / non-finite counts); marks the run as not covered by its ε.

Every field is overridable from the command line with its documented type
(``--config.privacy.noise_multiplier=1.1``, ``--config.privacy.target_epsilon=2``,
``--config.privacy.l2_clip_norm=auto``).

σ (``noise_multiplier``) is the std of the gradient-sum noise over C (with adaptive clipping,
the total multiplier that the gradient and the count share). The accountant is fed the
*accounted* multiplier z = std / sensitivity: z = σ under Poisson (add/remove-one, sensitivity
C) and z = σ/2 under shuffle (replace-one, sensitivity 2C). A target ε calibrates z and sets
σ = z (Poisson) or 2z (shuffle).
"""

import dataclasses
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.privacy import accounting, adaptive, aggregators, clipping, mechanism
from trustml.privacy import ledger as ledger_lib
from trustml.privacy import sampling as sampling_lib

DEFAULTS: dict[str, Any] = dict(
  mechanism="none",
  l2_clip_norm=1.0,
  noise_multiplier=None,
  target_epsilon=None,
  delta=1e-5,
  sampling="poisson",
  accountant="rdp",
  rdp_conversion="improved",
  virtual_batch_size=0,
  clipping="flat",
  initial_l2_clip_norm=1.0,
  target_quantile=0.5,
  clip_learning_rate=0.2,
  count_noise_multiplier=0.0,
  noise_schedule="constant",
  noise_decay=1.0,
  truncation_budget=1e-3,
  noise_seed=None,
  skip_padding=False,
  release_unsafe_stats=False,
)
NOISE_SCHEDULES = ("constant", "exp_decay")


def default_privacy_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``privacy`` section with defaults (see module docstring), typed for CLI overrides.

  ``noise_multiplier`` and ``target_epsilon`` are float placeholders and ``noise_seed`` an int
  placeholder (None until set); ``l2_clip_norm`` holds a number or ``'auto'``.
  """
  values = dict(DEFAULTS)
  values.update(overrides)
  typed = dict(values)
  typed["noise_multiplier"] = config_dict.FieldReference(
    values["noise_multiplier"], field_type=float
  )
  typed["target_epsilon"] = config_dict.FieldReference(values["target_epsilon"], field_type=float)
  typed["noise_seed"] = config_dict.FieldReference(values["noise_seed"], field_type=int)
  typed["l2_clip_norm"] = config_dict.FieldReference(values["l2_clip_norm"], field_type=object)
  return ml_collections.ConfigDict(typed)


def _get(cfg, key):
  return cfg[key] if key in cfg else DEFAULTS[key]


def validate_privacy(privacy: Any, physical_batch_size: int) -> None:
  """Validates the ``privacy`` section before any compute.

  Args:
    privacy: the section (missing fields take :data:`DEFAULTS`).
    physical_batch_size: ``train.batch_size``.

  Raises:
    ConfigError: naming the first invalid field and its allowed range.
  """
  validation.known_fields("privacy", privacy.keys(), DEFAULTS)
  mech = validation.one_of("privacy.mechanism", _get(privacy, "mechanism"), mechanism.MECHANISMS)
  if mech == "none":
    return
  clip = _get(privacy, "l2_clip_norm")
  if clip != "auto":
    if isinstance(clip, str):
      raise validation.ConfigError(f"privacy.l2_clip_norm={clip!r} is invalid: a number or 'auto'")
    validation.positive("privacy.l2_clip_norm", clip)
  sigma, eps = _get(privacy, "noise_multiplier"), _get(privacy, "target_epsilon")
  if sigma is None and eps is None:
    raise validation.ConfigError(
      "privacy.noise_multiplier=None is invalid: set noise_multiplier or target_epsilon"
    )
  if sigma is not None:
    validation.non_negative("privacy.noise_multiplier", sigma)
  if eps is not None:
    validation.positive("privacy.target_epsilon", eps)
    if not math.isfinite(float(eps)):
      raise validation.ConfigError(
        f"privacy.target_epsilon={eps} is invalid: a finite ε > 0 (for non-private training "
        "set privacy.mechanism=none)"
      )
  if sigma is not None and not math.isfinite(float(sigma)):
    raise validation.ConfigError(f"privacy.noise_multiplier={sigma} is invalid: a finite σ >= 0")
  seed = _get(privacy, "noise_seed")
  if seed is not None:
    validation.non_negative_int("privacy.noise_seed", seed)
  unsafe = _get(privacy, "release_unsafe_stats")
  if not isinstance(unsafe, bool):
    raise validation.ConfigError(
      f"privacy.release_unsafe_stats={unsafe!r} is invalid: True or False"
    )
  skip = _get(privacy, "skip_padding")
  if not isinstance(skip, bool):
    raise validation.ConfigError(f"privacy.skip_padding={skip!r} is invalid: True or False")
  validation.in_range("privacy.delta", _get(privacy, "delta"), 0.0, 1.0)
  sampling = validation.one_of("privacy.sampling", _get(privacy, "sampling"), accounting.SAMPLINGS)
  acc = validation.one_of("privacy.accountant", _get(privacy, "accountant"), accounting.ACCOUNTANTS)
  conv = validation.one_of(
    "privacy.rdp_conversion", _get(privacy, "rdp_conversion"), accounting.CONVERSIONS
  )
  accounting.make_accountant(acc, sampling, conv)
  vb = validation.non_negative_int(
    "privacy.virtual_batch_size", _get(privacy, "virtual_batch_size")
  )
  validation.positive_int("train.batch_size", physical_batch_size)
  if vb and vb % physical_batch_size:
    raise validation.ConfigError(
      f"privacy.virtual_batch_size={vb} is invalid: must be a multiple of the physical "
      f"train.batch_size={physical_batch_size}"
    )
  validation.one_of("privacy.clipping", _get(privacy, "clipping"), clipping.CLIPPINGS)
  validation.positive("privacy.initial_l2_clip_norm", _get(privacy, "initial_l2_clip_norm"))
  validation.in_range("privacy.target_quantile", _get(privacy, "target_quantile"), 0.0, 1.0)
  validation.positive("privacy.clip_learning_rate", _get(privacy, "clip_learning_rate"))
  validation.non_negative("privacy.count_noise_multiplier", _get(privacy, "count_noise_multiplier"))
  sched = _get(privacy, "noise_schedule")
  validation.one_of("privacy.noise_schedule", sched, NOISE_SCHEDULES)
  validation.in_range(
    "privacy.noise_decay", _get(privacy, "noise_decay"), 0.0, 1.0, high_inclusive=True
  )
  validation.in_range("privacy.truncation_budget", _get(privacy, "truncation_budget"), 0.0, 1.0)
  if clip == "auto" and sigma is not None and sigma == 0:
    raise validation.ConfigError(
      "privacy.noise_multiplier=0 is invalid with l2_clip_norm='auto': the count query needs noise"
    )


@dataclasses.dataclass(frozen=True)
class Resolved:
  """The numbers a DP run uses, resolved from the config and the dataset size.

  Attributes:
    mechanism, clipping, sampling, accountant, conversion: names.
    aggregator: the clipped aggregator (unit example, relation from the sampling).
    dataset_size: N.
    physical_batch_size: micro-batch size.
    logical_batch_size: expected (Poisson) or fixed (shuffle) logical batch size.
    sampling_rate: q = logical / N.
    batch_rows: static rows of a step's batch (Poisson cap or the fixed batch size).
    num_steps: steps planned.
    noise_multiplier: base σ (std / C; the total shared with the count under adaptive).
    count_noise_multiplier: σ_b (0 without adaptive clipping).
    adaptive: adaptive clipping on.
    l2_clip_norm: C at step 0.
    delta, target_epsilon: budget.
    truncation_prob: P(truncation) per step at N + 1 examples.
    schedule: the gradient-noise schedule (:class:`~trustml.privacy.mechanism.NoiseSchedule`).
    noise_seed: the explicit noise seed, or None (OS entropy).
    release_unsafe_stats: exact private statistics are released too.
    skip_padding: all-padding micro-batches are skipped (Poisson only; timing not covered).
  """

  mechanism: str
  clipping: str
  sampling: str
  accountant: str
  conversion: str
  aggregator: aggregators.ClippedAggregator
  dataset_size: int
  physical_batch_size: int
  logical_batch_size: int
  sampling_rate: float
  batch_rows: int
  num_steps: int
  noise_multiplier: float
  count_noise_multiplier: float
  adaptive: bool
  l2_clip_norm: float
  delta: float
  target_epsilon: float | None
  truncation_prob: float
  schedule: mechanism.NoiseSchedule
  noise_seed: int | None
  release_unsafe_stats: bool
  skip_padding: bool = False

  def accounted_sigma(self, step: int) -> float:
    """The planned accounted z of step ``step`` (σ_t over the sensitivity factor)."""
    return self.schedule.total(step) / self.aggregator.sensitivity_factor

  def grad_sigma(self, step: int) -> float:
    """σ applied to the gradient sum at ``step`` (less than σ_t under adaptive clipping)."""
    return self.schedule.host(step)

  def ledger(self, **kwargs: Any) -> ledger_lib.PrivacyLedger:
    """The run's :class:`~trustml.privacy.ledger.PrivacyLedger` for these numbers.

    Its secret is ``SecretStreams.for_run(noise_seed)`` (fresh OS entropy unless a noise seed
    is configured).

    Args:
      **kwargs: further ledger arguments (``fingerprint``, ``config``, ``extra_summary``).
    """
    return ledger_lib.PrivacyLedger(
      aggregator=self.aggregator,
      plan_fn=self.plan,
      delta=self.delta,
      accountant=self.accountant,
      conversion=self.conversion,
      target_epsilon=self.target_epsilon,
      max_steps=self.num_steps,
      secret=rng_lib.SecretStreams.for_run(self.noise_seed),
      noise_seed_fixed=self.noise_seed is not None,
      release_unsafe_stats=self.release_unsafe_stats,
      **kwargs,
    )

  def plan(self, step: int) -> ledger_lib.StepRecord:
    """The planned :class:`~trustml.privacy.ledger.StepRecord` of step ``step``."""
    fixed = self.sampling != "poisson"
    return ledger_lib.StepRecord(
      sampling=self.sampling,
      sampling_rate=self.sampling_rate,
      dataset_size=self.dataset_size,
      batch_size=self.logical_batch_size if fixed else 0,
      noise_multiplier=self.accounted_sigma(step),
      truncation_prob=self.truncation_prob,
    )


def resolve(
  privacy: Any, train: Any, dataset_size: int, planned_steps_fn, *, num_data_shards: int = 1
) -> Resolved:
  """Resolves sampling rate, steps, cap and σ (calibrated if needed).

  Args:
    privacy: the validated ``privacy`` section.
    train: the ``train`` section (``batch_size`` = physical micro-batch).
    dataset_size: N training examples.
    planned_steps_fn: ``fn(logical_batch_size) -> steps`` from the train section.
    num_data_shards: devices the global batch is split over; the Poisson cap is a multiple of
      ``num_data_shards × batch_size`` so every shard gets whole micro-batches.

  Returns:
    The :class:`Resolved` numbers.

  Raises:
    ConfigError: if q = logical / N is not in (0, 1] or calibration is impossible.
  """
  physical = int(train.batch_size)
  validate_privacy(privacy, physical)
  validation.positive_int("mesh.num_data_shards", num_data_shards)
  logical = int(_get(privacy, "virtual_batch_size")) or physical
  if logical > dataset_size:
    raise validation.ConfigError(
      f"privacy.virtual_batch_size={logical} is invalid: must be <= the {dataset_size} "
      "training examples"
    )
  if _get(privacy, "sampling") != "poisson" and logical % (physical * num_data_shards):
    raise validation.ConfigError(
      f"privacy.virtual_batch_size={logical} is invalid: a fixed-size batch must be a multiple "
      f"of train.batch_size x data shards = {physical * num_data_shards}"
    )
  q = logical / dataset_size
  validation.in_range("privacy.sampling_rate", q, 0.0, 1.0, high_inclusive=True)
  steps = int(planned_steps_fn(logical))
  sampling = _get(privacy, "sampling")
  delta = float(_get(privacy, "delta"))
  eps_target = _get(privacy, "target_epsilon")
  relation = aggregators.relation_for_sampling(sampling)
  agg = aggregators.ClippedAggregator(
    unit="example", relation=relation, clipping=_get(privacy, "clipping")
  )
  if sampling == "poisson":
    budget = float(_get(privacy, "truncation_budget")) * delta
    if eps_target is not None:
      budget /= 1.0 + math.exp(min(float(eps_target), 700.0))
    rows = sampling_lib.poisson_cap(dataset_size + 1, q, physical * num_data_shards, steps, budget)
    trunc = sampling_lib.truncation_probability(dataset_size + 1, q, rows)
  else:
    rows, trunc = logical, 0.0
  decay = float(_get(privacy, "noise_decay"))
  steps_per_epoch = max(1, int(round(1.0 / q)))
  if _get(privacy, "noise_schedule") != "exp_decay":
    decay = 1.0
  adaptive_on = _get(privacy, "l2_clip_norm") == "auto"
  count_sigma = float(_get(privacy, "count_noise_multiplier"))
  if adaptive_on and count_sigma == 0:
    count_sigma = adaptive.default_count_noise_multiplier(logical)
  sigma = _get(privacy, "noise_multiplier")
  acc = _get(privacy, "accountant")
  conversion = _get(privacy, "rdp_conversion")
  if sigma is None:
    relative = [(decay ** (s // steps_per_epoch), 1) for s in range(steps)]
    z = accounting.calibrate_noise_multiplier(
      float(eps_target),
      delta,
      schedule=_merge(relative),
      sampling=sampling,
      sampling_rate=q,
      accountant=acc,
      dataset_size=dataset_size,
      conversion=conversion,
    )
    sigma = z * agg.sensitivity_factor
  sigma = float(sigma)
  if adaptive_on and sigma > 0 and 2.0 * count_sigma <= sigma:
    count_sigma = sigma  # Keeps the gradient's share positive (2σ_b > σ_t, as σ_t ≤ σ).
  schedule = mechanism.NoiseSchedule(
    sigma, decay, steps_per_epoch, count_sigma if adaptive_on else 0.0
  )
  clip = float(
    _get(privacy, "initial_l2_clip_norm") if adaptive_on else _get(privacy, "l2_clip_norm")
  )
  return Resolved(
    mechanism=_get(privacy, "mechanism"),
    clipping=_get(privacy, "clipping"),
    sampling=sampling,
    accountant=acc,
    conversion=conversion,
    aggregator=agg,
    dataset_size=int(dataset_size),
    physical_batch_size=physical,
    logical_batch_size=logical,
    sampling_rate=q,
    batch_rows=rows,
    num_steps=steps,
    noise_multiplier=sigma,
    count_noise_multiplier=count_sigma if adaptive_on else 0.0,
    adaptive=adaptive_on,
    l2_clip_norm=clip,
    delta=delta,
    target_epsilon=None if eps_target is None else float(eps_target),
    truncation_prob=trunc,
    schedule=schedule,
    noise_seed=_get(privacy, "noise_seed"),
    release_unsafe_stats=bool(_get(privacy, "release_unsafe_stats")),
    skip_padding=bool(_get(privacy, "skip_padding")) and sampling == "poisson",
  )


def _merge(pairs: list[tuple[float, int]]) -> list[tuple[float, int]]:
  segs: list[list[float]] = []
  for r, n in pairs:
    if segs and segs[-1][0] == r:
      segs[-1][1] += n
    else:
      segs.append([r, n])
  return [(r, int(n)) for r, n in segs]


__all__ = [
  "DEFAULTS",
  "NOISE_SCHEDULES",
  "Resolved",
  "default_privacy_config",
  "resolve",
  "validate_privacy",
]
