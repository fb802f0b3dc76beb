"""Device (client) selection per round and the matching aggregation weights.

Samplers:

* ``uniform``: ``m`` clients uniformly without replacement; inclusion probability ``m / N``.
* ``activity`` with ``mode="without_replacement"``: exactly ``m`` distinct clients with inclusion
  probability ``pi_i = min(1, c * n_i^beta)`` (``c`` chosen so ``sum pi_i = m``; clients capped at 1
  are always taken). Drawn by randomized systematic pi-ps sampling, so the ``pi_i`` are exact, not
  approximate as with successive draws.
* ``activity`` with ``mode="poisson"``: each client independently with the same ``pi_i``; the
  number of clients varies around ``m``.

Aggregation weighting is an explicit choice (:func:`aggregation_weights`):

* ``"num_examples"``: ``w_i = n_i`` (self-normalised by the sampled sum).
* ``"uniform"``: ``w_i = 1``.
* ``"inverse_probability"``: ``w_i = n_i / pi_i`` (Hajek / Horvitz-Thompson).

Estimators (``selection.estimator``). Outside DP the round divides the weighted sum of the
sampled deltas by the *sampled* weight sum (``estimator="self_normalized"``, the default): a
ratio (Hájek) estimator, consistent but biased for a finite number of clients per round (the
audit's simulation shaped like the embedded corpus: bias -0.41, about 0.5 sd). With
``estimator="fixed_denominator"`` it divides by the expected weight sum
``D = sum_i pi_i w_i`` over the eligible population (:func:`fixed_denominator`), the
Horvitz-Thompson form, which is exactly unbiased for ``sum_i pi_i w_i Delta_i / D``:

* ``uniform`` + ``num_examples``: ``D = m / N * sum n``, target the example-weighted objective
  ``sum_i n_i F_i / sum_i n_i``;
* ``activity(beta=1)`` + ``uniform``: ``pi_i w_i = pi_i``, which is proportional to ``n_i`` only
  while no ``pi_i`` is capped at 1; once a heavy client is capped (always taken) it counts
  ``1`` instead of ``c n_i`` and the target is no longer the example-weighted objective;
* any sampler + ``inverse_probability``: ``pi_i w_i = n_i`` exactly, capped or not.

``activity(beta=1)`` + ``num_examples`` weights ``n_i`` twice (targets ``n_i^2``-weighting) and
leans towards heavy clients, which is sometimes what an activity study wants to measure. Nothing
here corrects it: neither estimator divides the ``n_i`` weights by ``pi_i``; the weighting that
does is ``inverse_probability``, and under uncapped ``activity(beta=1)`` its ``w_i = n_i / pi_i``
is the same constant ``sum n / m`` for every client, i.e. ``uniform`` weights.

With exactly ``m`` clients per round (``uniform``, or ``activity`` without replacement) and
``uniform`` weights, the sampled weight sum is the constant ``m = D``: the self-normalised and
the fixed-denominator estimators coincide and are exactly unbiased (for the client-mean
objective under ``uniform`` sampling, for the example-weighted one under uncapped ``activity``).
With ``num_examples`` weights the sampled sum ``sum_{i in S} n_i`` varies from round to round and
the default estimator is a ratio estimator.
"""

import dataclasses

import numpy as np

from trustml.core import rng as rng_lib
from trustml.core import validation

SAMPLERS = ("uniform", "activity")
MODES = ("without_replacement", "poisson")
WEIGHTINGS = ("num_examples", "uniform", "inverse_probability")
ESTIMATORS = ("self_normalized", "fixed_denominator")


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Configuration of a client sampler.

  Attributes:
    name: ``"uniform"`` or ``"activity"``.
    num_clients_per_round: ``m``, the (expected) number of clients per round.
    beta: activity exponent (probability ``propto n_i^beta``); ignored by ``uniform``.
    mode: ``"without_replacement"`` or ``"poisson"``.
  """

  name: str = "uniform"
  num_clients_per_round: int = 10
  beta: float = 1.0
  mode: str = "without_replacement"

  def validate(self, population_size: int) -> "Sampler":
    """Checks the fields against a population of ``population_size`` clients.

    Raises:
      ConfigError: on an unknown name/mode, a non-positive ``m``, ``m`` above the population,
        or a negative ``beta``.
    """
    validation.one_of("selection.sampler", self.name, SAMPLERS)
    validation.one_of("selection.mode", self.mode, MODES)
    validation.positive_int("selection.num_clients_per_round", self.num_clients_per_round)
    validation.non_negative("selection.beta", self.beta)
    if self.num_clients_per_round > population_size:
      raise validation.ConfigError(
        f"selection.num_clients_per_round={self.num_clients_per_round} is invalid: must be <= "
        f"the population of {population_size} clients"
      )
    return self


def inclusion_probabilities(sampler: Sampler, sizes: np.ndarray) -> np.ndarray:
  """Exact per-round inclusion probabilities ``pi_i`` (float64 ``[N]``, summing to ``m``).

  Args:
    sampler: the sampler.
    sizes: ``n_i`` per client (``[N]``, all >= 1).

  Returns:
    ``pi`` with ``0 < pi_i <= 1`` and ``sum(pi) == m``.

  Raises:
    ConfigError: if the sampler does not fit the population or a client is empty.
  """
  sizes = np.asarray(sizes, dtype=np.float64)
  sampler.validate(len(sizes))
  if np.any(sizes < 1):
    raise validation.ConfigError("population has an empty client: every client needs >= 1 example")
  m = sampler.num_clients_per_round
  if sampler.name == "uniform":
    return np.full(len(sizes), m / len(sizes))
  a = sizes**sampler.beta
  pi = np.zeros_like(a)
  capped = np.zeros(len(a), dtype=bool)
  # Iteratively cap probabilities at 1 and rescale the rest to sum to the remaining budget.
  for _ in range(len(a) + 1):
    budget = m - capped.sum()
    free = ~capped
    pi[free] = budget * a[free] / a[free].sum()
    pi[capped] = 1.0
    over = free & (pi > 1.0)
    if not over.any():
      break
    capped |= over
  return pi


def _systematic(pi: np.ndarray, gen: np.random.Generator) -> np.ndarray:
  """Randomized systematic pi-ps sampling: exactly ``round(sum pi)`` units, exact ``pi``."""
  order = gen.permutation(len(pi))
  cum = np.concatenate([[0.0], np.cumsum(pi[order])])
  m = int(round(cum[-1]))
  points = gen.uniform() + np.arange(m)
  pos = np.searchsorted(cum, points, side="right") - 1
  pos = np.clip(pos, 0, len(pi) - 1)
  return np.sort(order[pos])


def sample(sampler: Sampler, sizes: np.ndarray, *, seed: int, round_index: int) -> np.ndarray:
  """Selects the clients of one round (positions into ``sizes``), deterministic in (seed, round).

  Args:
    sampler: the sampler.
    sizes: ``n_i`` per client ``[N]``.
    seed: run seed.
    round_index: the round counter (a resumed run draws the same clients).

  Returns:
    Sorted int64 positions of the selected clients (exactly ``m`` unless ``mode="poisson"``).

  Raises:
    ConfigError: if the sampler does not fit the population.
  """
  pi = inclusion_probabilities(sampler, sizes)
  gen = rng_lib.numpy_rng(seed, "selection", round_index)
  if sampler.mode == "poisson":
    return np.flatnonzero(gen.uniform(size=len(pi)) < pi).astype(np.int64)
  if sampler.name == "uniform":
    return np.sort(gen.choice(len(pi), sampler.num_clients_per_round, replace=False)).astype(
      np.int64
    )
  return _systematic(pi, gen).astype(np.int64)


def aggregation_weights(
  weighting: str, sizes: np.ndarray, inclusion: np.ndarray | None = None
) -> np.ndarray:
  """Aggregation weights of the sampled clients (float32 ``[m]``).

  Args:
    weighting: ``"num_examples"``, ``"uniform"`` or ``"inverse_probability"``.
    sizes: ``n_i`` of the sampled clients.
    inclusion: ``pi_i`` of the sampled clients (required for ``inverse_probability``).

  Returns:
    Unnormalised weights; the round divides by their sum (or by a fixed denominator under DP).

  Raises:
    ConfigError: on an unknown weighting or missing inclusion probabilities.
  """
  validation.one_of("algorithm.weighting", weighting, WEIGHTINGS)
  sizes = np.asarray(sizes, dtype=np.float64)
  if weighting == "num_examples":
    w = sizes
  elif weighting == "uniform":
    w = np.ones_like(sizes)
  else:
    if inclusion is None:
      raise validation.ConfigError(
        "algorithm.weighting='inverse_probability' needs inclusion probabilities"
      )
    w = sizes / np.asarray(inclusion, dtype=np.float64)
  return w.astype(np.float32)


def fixed_denominator(weighting: str, sizes: np.ndarray, inclusion: np.ndarray) -> float:
  """The Horvitz-Thompson denominator ``D = sum_i pi_i w_i`` over the eligible population.

  Dividing ``sum_{i in S} w_i Delta_i`` by ``D`` (instead of by ``sum_{i in S} w_i``) gives an
  exactly unbiased estimate of ``sum_i pi_i w_i Delta_i / D`` under any sampler with inclusion
  probabilities ``pi_i``.

  Args:
    weighting: the aggregation weighting (see :func:`aggregation_weights`).
    sizes: ``n_i`` of every eligible client ``[N]``.
    inclusion: ``pi_i`` of every eligible client ``[N]``.

  Returns:
    ``D`` (float).

  Raises:
    ConfigError: on an unknown weighting or mismatched lengths.

  Example:
    >>> fixed_denominator("num_examples", np.array([2, 6]), np.array([0.5, 0.5]))
    4.0
  """
  validation.same_length(sizes=sizes, inclusion=inclusion)
  pi = np.asarray(inclusion, dtype=np.float64)
  w = aggregation_weights(weighting, sizes, pi).astype(np.float64)
  if weighting == "inverse_probability":  # exact n_i, without the float32 round trip
    return float(np.asarray(sizes, dtype=np.float64).sum())
  return float((pi * w).sum())


__all__ = [
  "ESTIMATORS",
  "MODES",
  "SAMPLERS",
  "WEIGHTINGS",
  "Sampler",
  "aggregation_weights",
  "fixed_denominator",
  "inclusion_probabilities",
  "sample",
]
