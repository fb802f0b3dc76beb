"""DP-SGD and eDP-SGD as a stateful gradient transformation, built from the privacy core.

A DP step on a logical batch (possibly several physical micro-batches) composes the three parts
every DP path of trustml uses:

1. the **clipped aggregator** (:mod:`~trustml.privacy.aggregators`): per micro-batch, the sum
   of per-example clipped gradients (``dp_sgd``: materialised ``vmap(grad)`` +
   :mod:`~trustml.privacy.clipping`; ``edp_sgd``: book-keeping ghost clipping,
   :mod:`~trustml.privacy.ghost`), accumulated over micro-batches; its sensitivity is C under
   add/remove-one (Poisson) and 2C under replace-one (fixed-size batches);
2. the **privatizer** (:func:`~trustml.privacy.noise.gaussian_privatizer`): ONE Gaussian draw
   ``N(0, (σ_t C_t)²)`` per logical batch added to the **sum**, from the secret key in the
   state (never from the public run seed);
3. division by the normaliser: the *expected* logical batch size ``qN`` under Poisson sampling
   (never the realised count, which would leak it), the fixed batch size under ``shuffle``.

Per-step values live in the state, not in the data batch (in the spirit of
``optax.inject_hyperparams``): :class:`DpSgdState` holds the privatizer state (secret key data,
step count, std), the current clip norm C_t (adaptive clipping updates it on device from the
noisy count) and nothing else; σ_t is a pure function of the step (:class:`NoiseSchedule`).
Each step returns in ``aux`` the values it actually used (``dp/noise_std``,
``dp/sensitivity``, ``dp/count_noise_std``, ``dp/count_sensitivity``, ``dp/l2_clip_norm``),
which the ledger composes into dp_accounting events.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trustml.core import conv_layout, validation
from trustml.core import rng as rng_lib
from trustml.core.types import Batch, Params
from trustml.models import contract
from trustml.privacy import adaptive as adaptive_lib
from trustml.privacy import aggregators, ghost, noise, per_example
from trustml.privacy import clipping as clipping_lib

MECHANISMS = ("none", "dp_sgd", "edp_sgd")
_STATS = ("num_examples", "num_nonfinite", "num_clipped", "num_unclipped", "loss_sum")


def clipped_sum_fn(
  loss_fn: Callable[..., jax.Array], mechanism: str, clipping: str = "flat"
) -> Callable[..., tuple[Params, Mapping[str, jax.Array]]]:
  """The per-(micro)batch clipped-sum function of a mechanism.

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> [B]`` weighted per-example losses.
    mechanism: ``"dp_sgd"`` (naive vmap) or ``"edp_sgd"`` (ghost clipping).
    clipping: ``"flat"`` or ``"per_layer"``.

  Returns:
    ``fn(params, batch, l2_clip_norm, rng) -> (sum_of_clipped_grads, stats)``.

  Raises:
    ConfigError: on an unknown mechanism or clipping.

  Formal guarantees:
    Both mechanisms return the same value: Σ_i c_i ∇L_i with ||c_i ∇L_i|| ≤ C; padding and
    non-finite examples contribute 0 (counted in ``num_nonfinite``). Sensitivity: C under
    add/remove-one example, 2C under replace-one (:class:`~aggregators.ClippedAggregator`).
  """
  validation.one_of("privacy.mechanism", mechanism, MECHANISMS[1:])
  validation.one_of("privacy.clipping", clipping, clipping_lib.CLIPPINGS)
  if mechanism == "edp_sgd":

    def fn(params, batch, l2_clip_norm, rng):
      return ghost.clipped_sum(loss_fn, params, batch, l2_clip_norm, clipping=clipping, rng=rng)

    return fn

  def naive(params, batch, l2_clip_norm, rng):
    grads, losses = per_example.per_example_grads(loss_fn, params, batch, rng)
    total, stats = clipping_lib.clipped_sum(grads, l2_clip_norm, batch["weight"], clipping)
    stats = dict(stats)
    stats["loss_sum"] = jnp.where(stats["valid"], losses, 0.0).sum()
    return total, stats

  return naive


def _accumulate(sum_fn, params, batch, clip, drop_key, physical, shards=1, skip_padding=False):
  """Σ over micro-batches of the clipped sums, and the summed stats (one logical batch).

  With ``shards`` > 1 (the batch split over a ``data`` mesh axis in contiguous blocks), micro-
  batch i takes ``physical`` rows from each shard's block, so every micro-batch stays local to
  the devices (no cross-device permutes; the clipped sums are reduced once).

  With ``skip_padding`` the loop runs only over the micro-batches up to the last one holding a
  row of non-zero weight in any shard (the sampler puts each shard's real rows first): the
  result is the same, the trip count is dynamic (one compiled body either way).
  """
  size = batch["weight"].shape[0]
  phys = (physical or size // shards) * shards
  if size % phys:
    raise validation.ConfigError(
      f"logical batch {size} is invalid: must be a multiple of the physical batch "
      f"{phys // shards} x {shards} data shards"
    )
  n_micro = size // phys

  def micro(i, b):
    k = None if drop_key is None else jax.random.fold_in(drop_key, i)
    total, stats = sum_fn(params, b, clip, k)
    return total, {n: stats[n].astype(jnp.float32) for n in _STATS}

  if n_micro == 1:
    return micro(0, batch)

  per = phys // shards

  def split(x):
    x = x.reshape((shards, n_micro, per) + x.shape[1:]).swapaxes(0, 1)
    return x.reshape((n_micro, phys) + x.shape[3:])

  stacked = jax.tree.map(split, batch)
  zero = (jax.tree.map(jnp.zeros_like, params), {n: jnp.zeros((), jnp.float32) for n in _STATS})

  def body(i, carry):
    acc, acc_stats = carry
    b = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), stacked)
    t, s = micro(i, b)
    return jax.tree.map(jnp.add, acc, t), {n: acc_stats[n] + s[n] for n in acc_stats}

  trips = n_micro
  if skip_padding:  # Micro-batches up to the last live row of any shard (0 if none).
    live = (batch["weight"] != 0).reshape(shards, n_micro * per)
    last = jnp.max(jnp.where(live, jnp.arange(n_micro * per)[None], -1))
    trips = (last + per) // per
  # Rolled: one micro-batch live at a time, one copy of the step to compile (a static trip
  # count lowers to a scan). The body's convolutions are put in XLA:CPU's library layout
  # (core/conv_layout: inside a loop they were otherwise emitted as naive loop nests).
  total, stats = jax.lax.fori_loop(0, trips, conv_layout.loop_body(body), zero)
  return total, stats


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
  """σ_t of the gradient noise (std / C) at step t.

  The total multiplier is ``σ_t = σ · decay ** (t // steps_per_epoch)``. Without adaptive
  clipping the gradient noise is ``σ_t``; with it, the count query (noise std σ_b) takes its
  share and the gradient keeps ``(σ_t⁻² − (2σ_b)⁻²)^(-½)`` (Andrew et al. 2021), so the pair is
  accounted as one query of multiplier ``σ_t / k`` (k = 1 add/remove-one, 2 replace-one).

  Attributes:
    noise_multiplier: σ, the total multiplier at step 0.
    decay: per-epoch factor in (0, 1] (1 = constant).
    steps_per_epoch: steps per epoch (≥ 1).
    count_noise_std: σ_b of adaptive clipping's count (0 = no count query).
  """

  noise_multiplier: float
  decay: float = 1.0
  steps_per_epoch: int = 1
  count_noise_std: float = 0.0

  def total(self, step: int) -> float:
    """σ_t (the total multiplier) at ``step``, in float64 on the host."""
    epoch = int(step) // max(int(self.steps_per_epoch), 1)
    return float(self.noise_multiplier) * float(self.decay) ** epoch

  def host(self, step: int) -> float:
    """The gradient's σ at ``step`` in float64 on the host (the ledger's plan)."""
    total = self.total(step)
    if self.count_noise_std <= 0 or total == 0:
      return total
    return (total**-2 - (2.0 * self.count_noise_std) ** -2) ** -0.5

  def __call__(self, step: jax.typing.ArrayLike) -> jax.Array:
    """The gradient's σ at ``step`` (traceable)."""
    epoch = (jnp.asarray(step, jnp.int32) // max(int(self.steps_per_epoch), 1)).astype(jnp.float32)
    total = jnp.float32(self.noise_multiplier) * jnp.float32(self.decay) ** epoch
    if self.count_noise_std <= 0 or self.noise_multiplier == 0:
      return total
    return (total**-2 - jnp.float32(2.0 * self.count_noise_std) ** -2) ** -0.5


class DpSgdState(NamedTuple):
  """State of :class:`DpSgd` (checkpointed with the train state).

  Attributes:
    privatizer: the privatizer's state: secret key data, step count, std of the last draw.
    l2_clip_norm: float32 C_t for the next step (adaptive clipping moves it).
  """

  privatizer: noise.PrivatizerState
  l2_clip_norm: jax.Array


@dataclasses.dataclass(frozen=True)
class AdaptiveClipping:
  """Quantile clipping (Andrew et al. 2021): ``C ← C · exp(−η (b̃ − γ))``.

  Attributes:
    target_quantile: γ in (0, 1).
    learning_rate: η > 0.
    count_noise_std: σ_b > 0, the std of the noise on the clipped count.
  """

  target_quantile: float
  learning_rate: float
  count_noise_std: float


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity (jax.jit caches on it).
class DpSgd:
  """DP-SGD / eDP-SGD as a stateful gradient transformation (the loop's ``StatefulGradFn``).

  Use :func:`dp_sgd` to build one. ``init(params) -> DpSgdState``;
  ``__call__(params, batch, key, state) -> (direction, aux, state)`` where ``key`` is the
  public step key (dropout only).

  Formal guarantees:
    Per step, the direction is ``(Σ_i c_i ∇L_i + N(0, (σ_t C_t)² I)) / normaliser``: a
    Gaussian query on the sampled batch with L2 sensitivity ``aggregator.sensitivity(C_t)``
    (C under add/remove-one example, 2C under replace-one). With adaptive clipping the step
    also releases the noisy count ``aggregator.count(...) + N(0, σ_b²)`` of sensitivity
    ``aggregator.count_sensitivity()``; ``aux`` carries every std and sensitivity used so the
    ledger accounts the pair as one Gaussian query. Not covered: the dropout key (public, can
    only add randomness); anything in ``aux`` under ``unsafe/`` (exact statistics of the
    sampled batch, present only with ``release_unsafe_stats``); with ``skip_padding``, the
    step's running time (it grows with ⌈|B_t| / physical_batch_size⌉).
  """

  aggregator: aggregators.ClippedAggregator
  sum_fn: Callable[..., Any]
  mechanism: str
  schedule: NoiseSchedule
  normaliser: float
  initial_l2_clip_norm: float
  key_data: np.ndarray
  physical_batch_size: int | None = None
  adaptive: AdaptiveClipping | None = None
  release_unsafe_stats: bool = False
  dropout: bool = True
  num_data_shards: int = 1
  skip_padding: bool = False

  def init(self, params: Params) -> DpSgdState:
    """The initial state (step 0, C_0, the secret key)."""
    del params
    priv = noise.gaussian_privatizer(self.key_data).init(None)
    return DpSgdState(priv, jnp.float32(self.initial_l2_clip_norm))

  def __call__(
    self, params: Params, batch: Batch, key: jax.Array, state: DpSgdState
  ) -> tuple[Params, dict[str, jax.Array], DpSgdState]:
    """One DP step: clipped sum, one noise draw, normalise; adaptive C update."""
    clip = state.l2_clip_norm
    step = state.privatizer.count
    sigma = self.schedule(step)
    drop_key = rng_lib.named(key, "dropout") if self.dropout else None
    total, stats = _accumulate(
      self.sum_fn,
      params,
      batch,
      clip,
      drop_key,
      self.physical_batch_size,
      self.num_data_shards,
      self.skip_padding,
    )
    priv_state = state.privatizer._replace(stddev=sigma * clip)
    aux: dict[str, jax.Array] = {
      "dp/noise_multiplier": sigma,
      "dp/noise_std": sigma * clip,
      "dp/sensitivity": jnp.float32(self.aggregator.sensitivity_factor) * clip,
      "dp/l2_clip_norm": clip,
      "dp/count_noise_std": jnp.float32(0.0),
      "dp/count_sensitivity": jnp.float32(self.aggregator.count_sensitivity()),
    }
    new_clip = clip
    if self.adaptive is not None:
      a = self.adaptive
      frac = adaptive_lib.noisy_unclipped_fraction(
        self.aggregator, stats, a.count_noise_std, self.normaliser, priv_state
      )
      new_clip = adaptive_lib.geometric_update(clip, frac, a.target_quantile, a.learning_rate)
      aux["dp/count_noise_std"] = jnp.float32(self.adaptive.count_noise_std)
      aux["dp/unclipped_fraction"] = frac  # Noisy: DP-released.
    noised, priv_state = noise.gaussian_privatizer(self.key_data).update(total, priv_state)
    direction = jax.tree.map(lambda x: x / self.normaliser, noised)
    if self.release_unsafe_stats:
      count = jnp.maximum(stats["num_examples"] - stats["num_nonfinite"], 1.0)
      aux["loss"] = stats["loss_sum"] / count
      for n in ("num_examples", "num_nonfinite", "num_clipped"):
        aux[f"unsafe/{n}"] = stats[n]
    return direction, aux, DpSgdState(priv_state, new_clip.astype(jnp.float32))

  update = __call__


def dp_sgd(
  loss_fn: Callable[..., jax.Array],
  *,
  mechanism: str,
  l2_clip_norm: float,
  noise_multiplier: float | NoiseSchedule,
  normaliser: float,
  key_data: jax.typing.ArrayLike,
  sampling: str = "poisson",
  physical_batch_size: int | None = None,
  clipping: str = "flat",
  adaptive: AdaptiveClipping | None = None,
  release_unsafe_stats: bool = False,
  dropout: bool = True,
  num_data_shards: int = 1,
  skip_padding: bool = False,
) -> DpSgd:
  """Builds DP-SGD (``dp_sgd``) or eDP-SGD (``edp_sgd``) for a per-example loss.

  Example:
    >>> from trustml.core import rng
    >>> dp = dp_sgd(model.per_example_loss, mechanism="edp_sgd", l2_clip_norm=1.0,
    ...             noise_multiplier=1.1, normaliser=256.0,
    ...             key_data=rng.SecretStreams.fresh().key_data("dp_noise"))  # doctest: +SKIP
    >>> state = dp.init(params)  # doctest: +SKIP
    >>> direction, aux, state = dp(params, batch, step_key, state)  # doctest: +SKIP

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> [B]`` weighted per-example losses.
    mechanism: ``"dp_sgd"`` or ``"edp_sgd"``.
    l2_clip_norm: C_0 > 0.
    noise_multiplier: σ ≥ 0 (gradient noise std / C) or a :class:`NoiseSchedule`.
    normaliser: divide the noised sum by this (``qN`` for Poisson, the batch size for shuffle).
    key_data: secret key data (:meth:`trustml.core.rng.SecretStreams.key_data`); required.
    sampling: ``"poisson"`` or ``"shuffle"``: fixes the neighbouring relation and sensitivity.
    physical_batch_size: micro-batch size (the logical batch must be a multiple of it).
    clipping: ``"flat"`` or ``"per_layer"``.
    adaptive: quantile clipping settings, or ``None``.
    release_unsafe_stats: also return exact batch statistics (``loss``, ``unsafe/...``),
      which the guarantee does not cover.
    dropout: pass a dropout key to the model.
    num_data_shards: devices the batch is split over (``data`` mesh axis); each micro-batch
      takes ``physical_batch_size`` rows per shard so it stays device-local.
    skip_padding: skip micro-batches that hold only padding (weight-0) rows: the sampler must
      put each shard's real rows first (:func:`trustml.privacy.sampling.poisson_batch` with
      ``num_blocks``). The released direction is unchanged; the step's running time then
      depends on ⌈|B_t| / physical⌉, a side channel the ε of the ledger does not cover
      (off by default: every row of the cap is processed, constant time).

  Returns:
    The :class:`DpSgd` transformation.

  Raises:
    ConfigError: on invalid arguments.
  """
  validation.one_of("privacy.mechanism", mechanism, MECHANISMS[1:])
  validation.positive("privacy.l2_clip_norm", l2_clip_norm)
  validation.positive("normaliser", normaliser)
  if physical_batch_size is not None:
    validation.positive_int("train.batch_size", physical_batch_size)
  count_std = 0.0
  if adaptive is not None:
    count_std = validation.positive("privacy.count_noise_multiplier", adaptive.count_noise_std)
  if isinstance(noise_multiplier, NoiseSchedule):
    schedule = noise_multiplier
    if schedule.count_noise_std != count_std:
      raise validation.ConfigError(
        f"noise_multiplier.count_noise_std={schedule.count_noise_std} is invalid: must equal "
        f"the adaptive count noise {count_std}"
      )
  else:
    sigma = validation.non_negative("privacy.noise_multiplier", noise_multiplier)
    schedule = NoiseSchedule(sigma, count_noise_std=count_std)
  if count_std and schedule.noise_multiplier and 2 * count_std <= schedule.noise_multiplier:
    raise validation.ConfigError(
      f"privacy.count_noise_multiplier={count_std} is invalid: must exceed noise_multiplier/2="
      f"{schedule.noise_multiplier / 2:.4g} so the gradient keeps some of the budget"
    )
  agg = aggregators.ClippedAggregator(
    unit="example", relation=aggregators.relation_for_sampling(sampling), clipping=clipping
  )
  return DpSgd(
    aggregator=agg,
    sum_fn=clipped_sum_fn(loss_fn, mechanism, clipping),
    mechanism=mechanism,
    schedule=schedule,
    normaliser=float(normaliser),
    initial_l2_clip_norm=float(l2_clip_norm),
    key_data=np.asarray(key_data, np.uint32),
    physical_batch_size=physical_batch_size,
    adaptive=adaptive,
    release_unsafe_stats=release_unsafe_stats,
    dropout=dropout,
    num_data_shards=validation.positive_int("mesh.num_data_shards", num_data_shards),
    skip_padding=bool(skip_padding),
  )


def make_grad_fn(
  model: contract.Model,
  *,
  mechanism: str,
  l2_clip_norm: float,
  noise_multiplier: float,
  normaliser: float,
  physical_batch_size: int | None = None,
  clipping: str = "flat",
  sampling: str = "poisson",
  dropout: bool = True,
) -> Callable[[Params, Batch, jax.Array], tuple[Params, dict[str, jax.Array]]]:
  """A stateless DP gradient function ``grad_fn(params, batch, key)`` (benchmarks, tests).

  The noise key of each call is derived from ``key`` (which the caller must keep secret and
  never reuse); training runs use :func:`dp_sgd`, whose key is secret state. Same arguments
  and guarantees as :func:`dp_sgd` (constant σ and C, no adaptive clipping).

  Returns:
    ``grad_fn(params, batch, key) -> (update_direction, aux)``.
  """
  validation.positive("privacy.l2_clip_norm", l2_clip_norm)

  def grad_fn(params, batch, key):
    dp = dp_sgd(
      model.per_example_loss,
      mechanism=mechanism,
      l2_clip_norm=l2_clip_norm,
      noise_multiplier=noise_multiplier,
      normaliser=normaliser,
      key_data=np.zeros(2, np.uint32),
      sampling=sampling,
      physical_batch_size=physical_batch_size,
      clipping=clipping,
      release_unsafe_stats=True,
      dropout=dropout,
    )
    state = dp.init(params)
    secret = jax.random.key_data(rng_lib.named(key, "dp_noise"))
    state = state._replace(privatizer=state.privatizer._replace(key_data=secret))
    direction, aux, _ = dp(params, batch, key, state)
    return direction, aux

  return grad_fn


def dp_aggregate(
  l2_clip_norm: float,
  noise_multiplier: float,
  normaliser: float,
  key_data: jax.typing.ArrayLike,
  *,
  sampling: str = "poisson",
  clipping: str = "flat",
  weight_fn: Callable[[Any], jax.Array] | None = None,
) -> optax.GradientTransformation:
  """An optax transformation: per-example gradients ``[B, ...]`` in, DP mean gradient out.

  Chain it before an optimizer, ``optax.chain(dp_aggregate(...), optax.adam(1e-3))``, and feed
  it per-example gradients (e.g. :func:`trustml.privacy.per_example.per_example_grads`). It is
  the same clipped aggregator and privatizer as :func:`dp_sgd`.

  Args:
    l2_clip_norm: C > 0.
    noise_multiplier: σ ≥ 0 (noise std σC).
    normaliser: expected batch size (Poisson) or fixed batch size.
    key_data: secret key data (``SecretStreams.key_data``); required; step t uses draw t.
    sampling: ``"poisson"`` or ``"shuffle"`` (the relation the sensitivity is stated under).
    clipping: ``"flat"`` or ``"per_layer"``.
    weight_fn: ``weight_fn(updates) -> [B]`` presence weights (default all 1; padding rows
      must get weight 0 through this).

  Returns:
    The ``optax.GradientTransformation``; its state is the privatizer's.

  Formal guarantees:
    Each update is (Σ_i clip_C(g_i) + N(0, σ²C²)) / normaliser, with sensitivity C under
    add/remove-one or 2C under replace-one (``sampling``); account it with the ledger.
  """
  validation.positive("privacy.l2_clip_norm", l2_clip_norm)
  validation.non_negative("privacy.noise_multiplier", noise_multiplier)
  validation.positive("normaliser", normaliser)
  agg = aggregators.ClippedAggregator(
    unit="example", relation=aggregators.relation_for_sampling(sampling), clipping=clipping
  )
  priv = noise.gaussian_privatizer(key_data, stddev=noise_multiplier * l2_clip_norm)

  def update_fn(updates, state, params=None):
    del params
    size = jax.tree.leaves(updates)[0].shape[0]
    weight = jnp.ones((size,), jnp.float32) if weight_fn is None else weight_fn(updates)
    total, _ = agg.sum(updates, l2_clip_norm, weight)
    noised, state = priv.update(total, state)
    return jax.tree.map(lambda x: x / normaliser, noised), state

  return optax.GradientTransformation(priv.init, update_fn)


__all__ = [
  "MECHANISMS",
  "AdaptiveClipping",
  "DpSgd",
  "DpSgdState",
  "NoiseSchedule",
  "clipped_sum_fn",
  "dp_aggregate",
  "dp_sgd",
  "make_grad_fn",
]
