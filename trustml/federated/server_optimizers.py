"""Server optimizers of Reddi et al. 2021 (Adaptive Federated Optimization, Alg. 2) in optax form.

The server sees the pseudo-gradient ``g_t = -Δ_t`` (the negated mean client delta) and keeps

* ``m_t = β1 m_{t-1} + (1 - β1) Δ_t`` (``m_{-1} = 0``),
* FedAdagrad: ``v_t = v_{t-1} + Δ_t²``,
* FedYogi: ``v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)``,
* FedAdam: ``v_t = β2 v_{t-1} + (1 - β2) Δ_t²``,

then ``x_{t+1} = x_t + η m_t / (sqrt(v_t) + τ)``: ``τ`` is added *outside* the square root
and there is no bias correction, unlike ``optax.adagrad`` (``eps`` inside the root, so
``τ = 1e-3`` there acts like ``sqrt(1e-3) ≈ 0.032``) and ``optax.adam`` / ``optax.yogi`` (bias
corrected). Alg. 2 starts from ``v_{-1} >= τ²``; here ``v_{-1} = initial_accumulator`` with the
default ``τ²``. FedAdagrad defaults to ``β1 = 0`` (plain Adagrad: the setting of the paper's
FedAdagrad analysis, and Flower's ``FedAdagrad``); ``β1 > 0`` gives Alg. 2's momentum form.

The optax versions stay available under their own names (``optax_adam``, ``optax_yogi``,
``optax_adagrad``) for comparison with code built on optax's defaults.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from trustml.core import validation

REDDI_VARIANTS = ("adagrad", "adam", "yogi")


class ScaleByReddiState(NamedTuple):
  """State of :func:`scale_by_reddi`.

  Attributes:
    mu: first moment ``m_t`` of the pseudo-gradient (same tree as the params).
    nu: second moment ``v_t`` (same tree as the params).
  """

  mu: optax.Updates
  nu: optax.Updates


def scale_by_reddi(
  variant: str,
  *,
  b1: float,
  b2: float,
  tau: float,
  initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """Rescales pseudo-gradients by ``m_t / (sqrt(v_t) + τ)`` (Reddi et al. 2021, Alg. 2).

  Args:
    variant: ``"adagrad"``, ``"adam"`` or ``"yogi"`` (the ``v_t`` recursion).
    b1: ``β1`` in ``[0, 1)``.
    b2: ``β2`` in ``[0, 1)`` (unused by adagrad).
    tau: ``τ > 0``, the adaptivity, added outside the square root.
    initial_accumulator: ``v_{-1}``; ``None`` gives ``τ²`` (Alg. 2 requires ``v_{-1} >= τ²``).

  Returns:
    An optax transformation; chain it with ``optax.scale_by_learning_rate(η)``.

  Raises:
    ConfigError: on an unknown variant or out-of-range β1, β2, τ.

  Example:
    >>> opt = optax.chain(scale_by_reddi("adam", b1=0.9, b2=0.99, tau=1e-3),
    ...                   optax.scale_by_learning_rate(0.01))
  """
  validation.one_of("algorithm.server_optimizer", variant, REDDI_VARIANTS)
  b1 = validation.in_range("algorithm.server_b1", b1, 0.0, 1.0, low_inclusive=True)
  b2 = validation.in_range("algorithm.server_b2", b2, 0.0, 1.0, low_inclusive=True)
  tau = validation.positive("algorithm.server_tau", tau)
  v0 = tau**2 if initial_accumulator is None else initial_accumulator
  v0 = validation.non_negative("algorithm.server_initial_accumulator", v0)

  def init_fn(params: optax.Params) -> ScaleByReddiState:
    mu = jax.tree.map(jnp.zeros_like, params)
    nu = jax.tree.map(lambda p: jnp.full_like(p, v0), params)
    return ScaleByReddiState(mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    # The sign of g = -Δ does not matter for the second moment; m tracks g, so the update
    # -η m_g / (sqrt(v) + τ) equals +η m_Δ / (sqrt(v) + τ) of Alg. 2.
    mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
    if variant == "adagrad":
      nu = jax.tree.map(lambda g, v: v + g * g, updates, state.nu)
    elif variant == "adam":
      nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * g * g, updates, state.nu)
    else:
      nu = jax.tree.map(
        lambda g, v: v - (1.0 - b2) * g * g * jnp.sign(v - g * g), updates, state.nu
      )
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), mu, nu)
    return out, ScaleByReddiState(mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def reddi(
  variant: str,
  learning_rate: float,
  *,
  b1: float | None = None,
  b2: float = 0.99,
  tau: float = 1e-3,
  initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """FedAdagrad / FedAdam / FedYogi server optimizer of Reddi et al. 2021 (Alg. 2).

  Args:
    variant: ``"adagrad"``, ``"adam"`` or ``"yogi"``.
    learning_rate: the server learning rate ``η > 0``.
    b1: ``β1``; ``None`` gives 0 for adagrad and 0.9 for adam/yogi (the paper's setting).
    b2: ``β2`` (the paper uses 0.99).
    tau: ``τ`` outside the root (the paper tunes it over ``1e-5 .. 1e-1``; default ``1e-3``).
    initial_accumulator: ``v_{-1}``, default ``τ²``.

  Returns:
    The optax transformation applied to the pseudo-gradient ``-Δ``.

  Raises:
    ConfigError: on invalid hyperparameters.

  Example:
    >>> opt = reddi("adagrad", 1.0, tau=1e-3)
  """
  lr = validation.positive("algorithm.server_learning_rate", learning_rate)
  if b1 is None:
    b1 = 0.0 if variant == "adagrad" else 0.9
  return optax.chain(
    scale_by_reddi(variant, b1=b1, b2=b2, tau=tau, initial_accumulator=initial_accumulator),
    optax.scale_by_learning_rate(lr),
  )


__all__ = ["REDDI_VARIANTS", "ScaleByReddiState", "reddi", "scale_by_reddi"]
