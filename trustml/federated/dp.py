"""User-level DP for federated averaging (DP-FedAvg, McMahan et al. 2018; Andrew et al. 2021).

Only what is federated lives here; clipping, noise, adaptive clipping and accounting are the
privacy core's (:mod:`trustml.privacy.aggregators`, :mod:`~trustml.privacy.noise`,
:mod:`~trustml.privacy.adaptive`, :mod:`~trustml.privacy.ledger`), the same code that central
DP-SGD runs. Per round:

1. each sampled user's model delta ``Δ_i`` is one row of the core's clipped sum (flat, or per
   layer to ``C/√L``), scaled by the capped weight ``w_i = min(n_i / n_cap, 1) ∈ (0, 1]``:
   ``S = Σ_i w_i clip_C(Δ_i)``;
2. the privatizer adds ``N(0, (σ_Δ C)² I)`` to ``S`` from the run's secret key (one draw per
   round), and the server divides by the *fixed* denominator ``Σ_i π_i w_i`` over the
   population (the expected total weight), never by the sampled weights;
3. with adaptive clipping the centred count ``Σ_i (b_i − ½)`` is released with noise σ_b and
   ``C ← C exp(−η (b̃ − γ))``; the total multiplier z is split as
   ``z⁻² = σ_Δ⁻² + (2σ_b)⁻²``.

Unit of privacy: the **user** (all of a client's rows). Neighbouring relation: add/remove one
user under Poisson cohorts (``selection.mode='poisson'``), replace one user under fixed-size
cohorts (``'without_replacement'``, uniform sampler only). Sensitivity of ``S``: C (add/remove)
or 2C (replace-one); of the centred count: ½ or 1 — the ledger accounts each round with the
values that ran.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from trustml.core import validation
from trustml.privacy import accounting, adaptive, aggregators, noise

ACCOUNTANTS = ("rdp", "pld")


@dataclasses.dataclass(frozen=True)
class DpConfig:
  """User-level DP aggregation settings (the ``dp`` config section without ``enabled``).

  Attributes:
    l2_clip_norm: initial clip ``C`` of a client's delta (> 0).
    noise_multiplier: total noise multiplier ``z`` (>= 0): std of the sum's noise over C
      (shared with the count under adaptive clipping).
    per_layer: clip leaf by leaf to ``C / sqrt(L)`` instead of the flat vector.
    weight_cap: ``n_cap`` of ``w_i = min(n_i / n_cap, 1)``; 0 gives uniform weights 1.
    adaptive: follow a target quantile of update norms (Andrew et al. 2021).
    target_quantile: ``gamma`` in (0, 1).
    clip_learning_rate: ``eta`` of the geometric clip update (> 0).
    count_noise_multiplier: ``sigma_b`` of the noisy centred unclipped count (> 0 when adaptive).
    delta: target delta for the reported epsilon.
    accountant: ``rdp`` or ``pld`` (Poisson cohorts only).
    truncation_budget: Poisson cohorts are capped so run-wide P(truncation) ≤ this fraction of
      δ (the probability is added to the reported total δ).
    noise_seed: None (secret OS entropy, kept in the checkpoint) or an int fixing it.
    release_unsafe_stats: also write exact statistics of the users' data (realised cohort sizes,
      exact unclipped fractions, client losses); the run is then marked as not covered.
    cohort_mode: ``selection.mode`` of the run (set by the experiment): fixes the relation.
  """

  l2_clip_norm: float = 1.0
  noise_multiplier: float = 1.0
  per_layer: bool = False
  weight_cap: float = 0.0
  adaptive: bool = False
  target_quantile: float = 0.5
  clip_learning_rate: float = 0.2
  count_noise_multiplier: float = 1.0
  delta: float = 1e-5
  accountant: str = "rdp"
  truncation_budget: float = 1e-3
  noise_seed: int | None = None
  release_unsafe_stats: bool = False
  cohort_mode: str = "poisson"

  def validate(self) -> "DpConfig":
    """Checks every field before any compute.

    Raises:
      ConfigError: naming the first invalid field.
    """
    validation.positive("dp.l2_clip_norm", self.l2_clip_norm)
    validation.non_negative("dp.noise_multiplier", self.noise_multiplier)
    validation.non_negative("dp.weight_cap", self.weight_cap)
    validation.in_range("dp.delta", self.delta, 0.0, 1.0)
    validation.one_of("dp.accountant", self.accountant, ACCOUNTANTS)
    validation.in_range("dp.truncation_budget", self.truncation_budget, 0.0, 1.0)
    if self.noise_seed is not None:
      validation.non_negative_int("dp.noise_seed", self.noise_seed)
    if not isinstance(self.release_unsafe_stats, bool):
      raise validation.ConfigError(
        f"dp.release_unsafe_stats={self.release_unsafe_stats!r} is invalid: True or False"
      )
    if self.adaptive:
      validation.in_range("dp.target_quantile", self.target_quantile, 0.0, 1.0)
      validation.positive("dp.clip_learning_rate", self.clip_learning_rate)
      validation.positive("dp.count_noise_multiplier", self.count_noise_multiplier)
      if self.noise_multiplier > 0 and 2 * self.count_noise_multiplier <= self.noise_multiplier:
        raise validation.ConfigError(
          f"dp.count_noise_multiplier={self.count_noise_multiplier} is invalid: must be > "
          f"noise_multiplier / 2 = {self.noise_multiplier / 2} so the update keeps finite noise"
        )
    return self

  @property
  def count_noise_std(self) -> float:
    """σ_b when adaptive clipping releases the count, else 0."""
    return float(self.count_noise_multiplier) if self.adaptive else 0.0


def sampling_scheme(mode: str) -> str:
  """The core's sampling name of a cohort mode: ``poisson`` or ``fixed`` (replace-one)."""
  return "poisson" if mode == "poisson" else "fixed"


def validate_selection(config: DpConfig, sampler_name: str, mode: str) -> None:
  """Rejects cohort selections whose privacy amplification the ledger cannot account.

  Raises:
    ConfigError: fixed-size cohorts with a non-uniform sampler (no dp_accounting event), or
      PLD with fixed-size cohorts.
  """
  if mode != "poisson" and sampler_name != "uniform":
    raise validation.ConfigError(
      f"selection.sampler={sampler_name!r} is invalid with dp.enabled and "
      f"selection.mode={mode!r}: fixed-size DP cohorts must be uniform (or use mode='poisson')"
    )
  accounting.make_accountant(config.accountant, sampling_scheme(mode))


def aggregator(config: DpConfig, mode: str | None = None) -> aggregators.ClippedAggregator:
  """The user-level clipped aggregator for cohorts drawn in ``mode`` (default the config's)."""
  mode = config.cohort_mode if mode is None else mode
  return aggregators.ClippedAggregator(
    unit="user",
    relation=aggregators.relation_for_sampling(sampling_scheme(mode)),
    clipping="per_layer" if config.per_layer else "flat",
  )


def update_noise_multiplier(config: DpConfig) -> float:
  """``σ_Δ``: the update's noise multiplier after the count's share.

  Returns ``z`` itself without adaptive clipping, else ``(z^-2 - (2 sigma_b)^-2)^-1/2``.
  """
  z = config.noise_multiplier
  if not config.adaptive or z == 0:
    return z
  return accounting.grad_noise_multiplier(z, config.count_noise_multiplier)


def capped_weights(num_examples: np.ndarray, weight_cap: float) -> np.ndarray:
  """``w_i = min(n_i / n_cap, 1)`` (or 1 when ``n_cap == 0``): every weight is in (0, 1].

  Args:
    num_examples: ``n_i`` per client.
    weight_cap: ``n_cap``.

  Returns:
    float32 weights.
  """
  n = np.asarray(num_examples, dtype=np.float64)
  if weight_cap <= 0:
    return np.ones_like(n, dtype=np.float32)
  return np.minimum(n / weight_cap, 1.0).astype(np.float32)


class DpAggregatorState(NamedTuple):
  """State of :class:`DpFedAvgAggregator` between rounds.

  Attributes:
    privatizer: the privatizer's state (secret key data, round count, last std).
    l2_clip_norm: float32 C of the next round (adaptive clipping moves it).
  """

  privatizer: noise.PrivatizerState
  l2_clip_norm: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class DpFedAvgAggregator:
  """DP-FedAvg's aggregator as FedJAX-style ``(init, apply)``, built from the privacy core.

  ``init(key_data) -> DpAggregatorState``; ``apply(deltas, weights, state, denominator,
  expected_clients) -> (mean_delta, state, aux)`` for stacked ``[clients, ...]`` deltas. The
  sharded round uses its two halves: :meth:`client_sums` per device shard (summable across
  devices) and :meth:`release` once on the reduced sums.

  Formal guarantees:
    Each round releases ``(S + N(0, (σ_Δ C)² I)) / denominator`` with ``S = Σ_i w_i clip_C(Δ_i)``,
    of L2 sensitivity ``aggregator.sensitivity(C)`` for the user relation of the cohort mode,
    and (adaptive) the centred count with noise σ_b and sensitivity
    ``aggregator.count_sensitivity()``. ``aux`` carries every std and sensitivity used (for the
    ledger) and, under ``unsafe/``, exact statistics that only ``release_unsafe_stats`` writes.
    Not covered: a user who contributes through several clients; the denominator must not
    depend on the sampled cohort (the experiment passes Σ_i π_i w_i over the population).
  """

  config: DpConfig

  @property
  def aggregator(self) -> aggregators.ClippedAggregator:
    """The user-level clipped aggregator."""
    return aggregator(self.config)

  def init(self, key_data: Any) -> DpAggregatorState:
    """The state before round 0 (C_0 and the secret key)."""
    priv = noise.gaussian_privatizer(key_data).init(None)
    return DpAggregatorState(priv, jnp.float32(self.config.l2_clip_norm))

  def client_sums(self, deltas: Any, weights: jax.Array, l2_clip_norm: jax.Array):
    """Clipped, weighted sum of stacked client deltas and the count statistics (one shard).

    Args:
      deltas: ``[clients, ...]`` pytree of model deltas.
      weights: ``[clients]`` capped weights (0 = padding client).
      l2_clip_norm: C of this round.

    Returns:
      ``(sum_tree, counts, norms)``: counts has ``num_valid`` and ``num_unclipped`` (sum them
      across shards); ``norms`` are the per-client norms before clipping (not released).
    """
    presence = (weights > 0).astype(jnp.float32)
    total, stats = self.aggregator.sum(deltas, l2_clip_norm, presence, scale=weights)
    counts = {
      "num_valid": stats["num_examples"] - stats["num_nonfinite"],
      "num_unclipped": stats["num_unclipped"],
    }
    return total, counts, stats["norms"]

  def release(self, total: Any, counts: dict, state: DpAggregatorState, denominator, expected):
    """Noises the round's sum once, divides by the fixed denominator, adapts C.

    Args:
      total: the cohort's clipped weighted sum (reduced over shards).
      counts: reduced ``num_valid`` / ``num_unclipped``.
      state: the aggregator state.
      denominator: the fixed denominator Σ_i π_i w_i.
      expected: expected cohort size Σ_i π_i (the count's normaliser).

    Returns:
      ``(mean_delta, new_state, aux)``.
    """
    agg = self.aggregator
    clip = state.l2_clip_norm
    sigma = jnp.float32(update_noise_multiplier(self.config))
    priv = state.privatizer._replace(stddev=sigma * clip)
    aux = {
      "dp/l2_clip_norm": clip,
      "dp/noise_multiplier": sigma,
      "dp/noise_std": sigma * clip,
      "dp/sensitivity": jnp.float32(agg.sensitivity_factor) * clip,
      "dp/count_noise_std": jnp.float32(self.config.count_noise_std),
      "dp/count_sensitivity": jnp.float32(agg.count_sensitivity()),
      "unsafe/unclipped_fraction": counts["num_unclipped"] / jnp.maximum(counts["num_valid"], 1.0),
    }
    new_clip = clip
    if self.config.adaptive:
      stats = {
        "num_examples": counts["num_valid"],
        "num_nonfinite": 0.0,
        "num_unclipped": counts["num_unclipped"],
      }
      frac = adaptive.noisy_unclipped_fraction(
        agg, stats, self.config.count_noise_std, expected, priv
      )
      new_clip = adaptive.geometric_update(
        clip, frac, self.config.target_quantile, self.config.clip_learning_rate
      )
      aux["dp/noisy_unclipped_fraction"] = frac
    noised, priv = noise.gaussian_privatizer(priv.key_data).update(total, priv)
    mean = jax.tree.map(lambda s: s / denominator, noised)
    return mean, DpAggregatorState(priv, new_clip), aux

  def apply(self, deltas, weights, state, denominator, expected):
    """One round on stacked deltas: :meth:`client_sums` then :meth:`release`."""
    total, counts, _ = self.client_sums(deltas, weights, state.l2_clip_norm)
    return self.release(total, counts, state, denominator, expected)


__all__ = [
  "ACCOUNTANTS",
  "DpAggregatorState",
  "DpConfig",
  "DpFedAvgAggregator",
  "aggregator",
  "capped_weights",
  "sampling_scheme",
  "update_noise_multiplier",
  "validate_selection",
]
