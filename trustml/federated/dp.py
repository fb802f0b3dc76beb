"""User-level DP for federated averaging (DP-FedAvg, McMahan et al. 2018; Andrew et al. 2021).

Per round, with clients sampled by Poisson sampling at rate ``q`` (or ``m`` of ``N`` uniformly):

1. each sampled client's model delta ``Delta_i`` is clipped to L2 norm ``C``, either as one flat
   vector (``per_layer=False``) or leaf by leaf to ``C / sqrt(L)`` for ``L`` leaves
   (``per_layer=True``; the concatenation still has norm <= ``C``);
2. the server sums ``sum_i w_i clip(Delta_i)`` with weights capped to ``w_i = min(n_i / n_cap, 1)``
   (``n_cap = 0`` means ``w_i = 1``);
3. adds ``N(0, (z_Delta C)^2 I)`` to the sum, and
4. divides by the *fixed* denominator ``q W`` with ``W = sum_all w_i`` (the expected total weight),
   not by the data-dependent sum of sampled weights.

Adaptive clipping (Andrew et al. 2021) tracks a target quantile ``gamma`` of update norms:
``b = (sum_i 1[||Delta_i|| <= C] + N(0, sigma_b^2)) / (q N)``, ``C <- C exp(-eta (b - gamma))``.
The total noise multiplier ``z`` is split so that
``z^-2 = z_Delta^-2 + (2 sigma_b)^-2`` (the count query has sensitivity 1/2 after centering),
and the accountant is fed ``z``.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from trustml.core import validation


@dataclasses.dataclass(frozen=True)
class DpConfig:
  """User-level DP aggregation settings.

  Attributes:
    l2_clip_norm: initial clip ``C`` of a client's delta (> 0).
    noise_multiplier: total noise multiplier ``z`` (>= 0) fed to the accountant.
    per_layer: clip leaf by leaf to ``C / sqrt(L)`` instead of the flat vector.
    weight_cap: ``n_cap`` of ``w_i = min(n_i / n_cap, 1)``; 0 gives uniform weights 1.
    adaptive: follow a target quantile of update norms (Andrew et al. 2021).
    target_quantile: ``gamma`` in (0, 1).
    clip_learning_rate: ``eta`` of the geometric clip update (> 0).
    count_noise_multiplier: ``sigma_b`` of the noisy unclipped count (> 0 when adaptive).
    delta: target delta for the reported epsilon.
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

  def validate(self) -> "DpConfig":
    """Checks every field before any compute.

    Raises:
      ConfigError: naming the first invalid field.
    """
    validation.positive("dp.l2_clip_norm", self.l2_clip_norm)
    validation.non_negative("dp.noise_multiplier", self.noise_multiplier)
    validation.non_negative("dp.weight_cap", self.weight_cap)
    validation.in_range("dp.delta", self.delta, 0.0, 1.0)
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


def update_noise_multiplier(config: DpConfig) -> float:
  """``z_Delta``: the noise multiplier left for the update after the count's share.

  Returns ``z`` itself without adaptive clipping, else ``(z^-2 - (2 sigma_b)^-2)^-1/2``.
  """
  z = config.noise_multiplier
  if not config.adaptive or z == 0:
    return z
  return (z**-2 - (2 * config.count_noise_multiplier) ** -2) ** -0.5


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


def global_norm(tree) -> jax.Array:
  """L2 norm of a pytree as one flat vector."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def clip(tree, l2_clip_norm: jax.typing.ArrayLike, per_layer: bool):
  """Clips a client delta to L2 norm ``l2_clip_norm``.

  Args:
    tree: one client's delta.
    l2_clip_norm: ``C``.
    per_layer: clip each leaf to ``C / sqrt(L)``.

  Returns:
    ``(clipped_tree, flat_norm_before_clipping)``.

  **Formal guarantees**: the returned tree has flat L2 norm <= ``C`` (per-layer: each of the
  ``L`` leaves <= ``C / sqrt(L)``, hence the whole <= ``C``). Nothing is bounded about the
  unclipped norm that is returned (it is used only through the noisy count).
  """
  norm = global_norm(tree)
  leaves = jax.tree.leaves(tree)
  if per_layer:
    c = l2_clip_norm / math.sqrt(len(leaves))

    def leaf_clip(x):
      n = jnp.sqrt(jnp.sum(jnp.square(x)))
      return x * jnp.minimum(1.0, c / jnp.maximum(n, 1e-12))

    return jax.tree.map(leaf_clip, tree), norm
  scale = jnp.minimum(1.0, l2_clip_norm / jnp.maximum(norm, 1e-12))
  return jax.tree.map(lambda x: x * scale, tree), norm


def add_noise(tree, stddev: jax.typing.ArrayLike, key: jax.Array):
  """Adds independent ``N(0, stddev^2)`` to every coordinate of ``tree`` (one key per leaf).

  Args:
    tree: the weighted sum of clipped deltas.
    stddev: noise standard deviation ``z_Delta * C``.
    key: the DP-noise key of this round; required, never reused for another draw.

  Returns:
    The noised tree.

  **Formal guarantees**: with ``sum_i w_i clip(Delta_i)``, ``w_i <= 1``, ``||clip||<=C``,
  adding or removing one user changes the sum by at most ``C`` in L2, so this is the Gaussian
  mechanism with noise multiplier ``stddev / C`` under add/remove-one-user adjacency. Privacy
  amplification needs the sampling to be as accounted (Poisson with rate ``q``).
  """
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  noised = [
    x + stddev * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)
  ]
  return jax.tree.unflatten(treedef, noised)


def adapt_clip(
  l2_clip_norm: jax.Array,
  unclipped_count: jax.Array,
  key: jax.Array,
  *,
  expected_clients: jax.typing.ArrayLike,
  config: DpConfig,
) -> tuple[jax.Array, jax.Array]:
  """Geometric update of the clip toward the target quantile (Andrew et al. 2021).

  Args:
    l2_clip_norm: current ``C``.
    unclipped_count: ``sum_i 1[||Delta_i|| <= C]`` over the sampled clients.
    key: the count-noise key of this round (required).
    expected_clients: ``q N``.
    config: DP settings.

  Returns:
    ``(new_clip, noisy_unclipped_fraction)``.

  **Formal guarantees**: the count has sensitivity 1 (1/2 after centering at 1/2); its noise
  ``sigma_b`` is part of the split that makes the round a Gaussian mechanism with multiplier
  ``z``. The clip value itself is then a post-processing of private outputs.
  """
  noisy = unclipped_count + config.count_noise_multiplier * jax.random.normal(key, (), jnp.float32)
  frac = noisy / expected_clients
  new = l2_clip_norm * jnp.exp(-config.clip_learning_rate * (frac - config.target_quantile))
  return new.astype(jnp.float32), frac


def epsilon(
  *,
  noise_multiplier: float,
  sampling_rate: float,
  rounds: int,
  delta: float,
  population_size: int | None = None,
  clients_per_round: int | None = None,
) -> float:
  """User-level epsilon after ``rounds`` rounds, from ``dp_accounting`` (RDP accountant).

  Poisson sampling at ``sampling_rate`` (add/remove-one-user) by default; with
  ``population_size`` and ``clients_per_round`` the fixed-size sampling without replacement
  event (replace-one-user) is accounted instead.

  Args:
    noise_multiplier: total ``z``.
    sampling_rate: ``q``.
    rounds: number of rounds (0 gives 0).
    delta: target delta.
    population_size: ``N`` for fixed-size sampling.
    clients_per_round: ``m`` for fixed-size sampling.

  Returns:
    epsilon (``inf`` when ``z == 0`` and ``rounds > 0``).
  """
  import dp_accounting  # pylint: disable=g-import-not-at-top

  if rounds <= 0:
    return 0.0
  if noise_multiplier <= 0:
    return float("inf")
  gauss = dp_accounting.GaussianDpEvent(noise_multiplier)
  if population_size is not None and clients_per_round is not None:
    event = dp_accounting.SampledWithoutReplacementDpEvent(
      population_size, clients_per_round, gauss
    )
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE
  else:
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, gauss)
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
  accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
  accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
  return float(accountant.get_epsilon(delta))


__all__ = [
  "DpConfig",
  "adapt_clip",
  "add_noise",
  "capped_weights",
  "clip",
  "epsilon",
  "global_norm",
  "update_noise_multiplier",
]
