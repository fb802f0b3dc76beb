"""Counterfactual role-reversal (CRR) distillation of a causal LM (Gupta et al., ACL Findings 2022).

A teacher causal LM trained on a gender-biased corpus is distilled into a smaller student with
the standard knowledge-distillation objective, per next-token position ``t`` with a target,

  ``L = kd_weight * tau**2 * KL(p_T^tau(. | x_<t) || p_S^tau(. | x_<t)) + alpha * CE(x_t, p_S)``

(``p^tau = softmax(logits / tau)``; both terms are means over target positions of the batch),
optionally with two mitigations, alone or together:

* **Counterfactual data augmentation (CDA)**: gender-swapped copies of the training sequences
  (token-level swap with :func:`trustml.fairness.counterfactual.swap_token_ids`, so ``x`` and
  ``x~`` are aligned position by position). Following Webster et al. (2020), ``two_sided`` trains
  on the originals *and* the swaps of every sequence holding a gendered token; ``one_sided``
  replaces such sequences by their swaps (the corpus is mirrored, not balanced).
* **Teacher-probability modification**: the teacher is run on ``x`` and on ``x~``; ``x~``'s
  next-token distribution ``q`` is mapped back to ``x``'s frame by swapping the probabilities of
  each gendered token pair (``q_back[v] = q[perm[v]]`` with ``perm`` the pair-swap permutation of
  the vocabulary) and combined with ``x``'s ``p`` by ``max`` (then renormalised), ``mean`` or
  ``geometric_mean`` (``sqrt(p * q_back)``, renormalised). The student distils towards that.

Every piece is a pure function. Training goes through the spine's loop
(:func:`trustml.train.loop.fit`, driven by :mod:`trustml.fairness.distill_loop`):
:func:`lm_grad_fn` and :func:`kd_grad_fn` are its gradient functions and :func:`step_batch` its
batches, a pure function of ``(seed, step)``; parameter init is the ``params`` stream, so a run
is deterministic from its seed, resumes exactly and runs data-parallel on the mesh. The whole
experiment (corpus, teacher, one student per variant, generation disparity and perplexity
table) is :func:`trustml.fairness.crr.run`.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from trustml.core import validation
from trustml.data import batching
from trustml.fairness import counterfactual
from trustml.models import contract

COMBINERS = ("max", "mean", "geometric_mean")
CDA_MODES = ("none", "one_sided", "two_sided")
_STEP_KEYS = ("tokens", "mask", "weight", "tokens_swapped")
GradFn = Callable[[object, Mapping[str, jax.Array], jax.Array], tuple[object, dict]]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One distillation setting: ``cda`` in :data:`CDA_MODES`, ``combiner`` in ``COMBINERS`` or None."""

  name: str
  cda: str = "none"
  combiner: str | None = None


def parse_variant(name: str) -> Variant:
  """Parses a variant name: ``plain``, or ``+``-joined parts ``cda`` (= ``cda_two_sided``),
  ``cda_one_sided``, ``cda_two_sided`` and ``mod_<combiner>``.

  Args:
    name: e.g. ``"plain"``, ``"mod_mean"``, ``"cda+mod_geometric_mean"``.

  Returns:
    The :class:`Variant`.

  Raises:
    ConfigError: for an unknown part or combiner, or two CDA / two modification parts.

  Example:
    >>> parse_variant("cda+mod_max")
    Variant(name='cda+mod_max', cda='two_sided', combiner='max')
  """
  name = name.strip()
  if name == "plain":
    return Variant(name)
  cda, combiner = "none", None
  for part in name.split("+"):
    part = part.strip()
    if part in ("cda", "cda_two_sided", "cda_one_sided"):
      if cda != "none":
        raise validation.ConfigError(f"distill.variants={name!r} is invalid: two CDA parts")
      cda = "one_sided" if part == "cda_one_sided" else "two_sided"
    elif part.startswith("mod_"):
      if combiner is not None:
        raise validation.ConfigError(f"distill.variants={name!r} is invalid: two mod_ parts")
      combiner = validation.one_of(f"distill.variants[{name!r}].combiner", part[4:], COMBINERS)
    else:
      raise validation.ConfigError(
        f"distill.variants={name!r} is invalid: part {part!r} must be plain, cda, "
        "cda_one_sided, cda_two_sided or mod_<combiner> with combiner in " + ", ".join(COMBINERS)
      )
  return Variant(name, cda, combiner)


def swap_permutation(vocab_size: int, id_pairs: np.ndarray) -> np.ndarray:
  """The vocabulary permutation ``[V]`` that swaps each gendered id pair (an involution)."""
  return counterfactual.swap_table(np.asarray(id_pairs).reshape(-1, 2), vocab_size)


def combine(p: jax.Array, q: jax.Array, combiner: str) -> jax.Array:
  """Combines two distributions over the last axis; the result sums to 1.

  Args:
    p: probabilities ``[..., V]``.
    q: probabilities ``[..., V]`` (already in ``p``'s frame).
    combiner: ``max`` (elementwise max, renormalised), ``mean`` (``(p + q) / 2``) or
      ``geometric_mean`` (``sqrt(p * q)``, renormalised).

  Returns:
    The combined distribution ``[..., V]``.

  Raises:
    ConfigError: for an unknown combiner.
  """
  validation.one_of("distill.combiner", combiner, COMBINERS)
  if combiner == "mean":
    return 0.5 * (p + q)
  c = jnp.maximum(p, q) if combiner == "max" else jnp.sqrt(p * q)
  return c / jnp.sum(c, axis=-1, keepdims=True)


def modify_teacher_probs(
  probs: jax.Array, probs_swapped: jax.Array, perm: jax.typing.ArrayLike, combiner: str
) -> jax.Array:
  """CRR teacher-probability modification.

  Args:
    probs: teacher next-token probabilities on ``x``, ``[..., V]``.
    probs_swapped: teacher probabilities on the counterfactual ``x~`` (same positions).
    perm: int ``[V]`` pair-swap permutation (:func:`swap_permutation`).
    combiner: one of :data:`COMBINERS`.

  Returns:
    ``combine(probs, probs_swapped[..., perm], combiner)``. Swapping the roles of ``x`` and
    ``x~`` permutes the output by ``perm`` (the modification is symmetric in each gendered pair).
  """
  return combine(probs, jnp.take(probs_swapped, jnp.asarray(perm), axis=-1), combiner)


def teacher_targets(
  apply_fn: Callable[..., jax.Array],
  params: object,
  batch: Mapping[str, jax.Array],
  *,
  temperature: float,
  combiner: str | None,
  perm: jax.Array | None,
) -> jax.Array:
  """Teacher soft targets ``[B, T, V]`` at ``temperature``, modified when ``combiner`` is set.

  ``batch["tokens_swapped"]`` (the counterfactual of ``batch["tokens"]``) is needed only with a
  combiner. Gradients are stopped.
  """
  probs = jax.nn.softmax(apply_fn(params, batch).astype(jnp.float32) / temperature, axis=-1)
  if combiner is not None:
    swapped = {**batch, "tokens": batch["tokens_swapped"]}
    q = jax.nn.softmax(apply_fn(params, swapped).astype(jnp.float32) / temperature, axis=-1)
    probs = modify_teacher_probs(probs, q, perm, combiner)
  return jax.lax.stop_gradient(probs)


def kd_loss(
  student_logits: jax.Array,
  teacher_probs: jax.Array,
  batch: Mapping[str, jax.Array],
  *,
  temperature: float,
  alpha: float,
  kd_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The KD objective ``kd_weight * tau^2 * KL(p_T || p_S^tau) + alpha * CE``.

  Position ``t`` predicts ``tokens[:, t + 1]``; a position counts when ``mask[:, t + 1]`` is set,
  weighted by ``weight`` (padding rows count 0). Both terms are means over counted positions.

  Args:
    student_logits: ``[B, T, V]``.
    teacher_probs: ``[B, T, V]`` soft targets at ``temperature`` (:func:`teacher_targets`).
    batch: ``tokens``, ``mask``, ``weight``.
    temperature: the softening temperature ``tau`` > 0.
    alpha: weight of the hard-label LM cross-entropy.
    kd_weight: weight of the KL term.

  Returns:
    ``(loss, aux)`` with aux ``kl``, ``ce`` (means) and ``loss``.
  """
  s = student_logits[:, :-1].astype(jnp.float32)
  p = teacher_probs[:, :-1]
  w = batch["mask"][:, 1:].astype(jnp.float32) * batch["weight"][:, None].astype(jnp.float32)
  denom = jnp.maximum(w.sum(), 1.0)
  log_ps = jax.nn.log_softmax(s / temperature, axis=-1)
  kl = jnp.sum(jax.scipy.special.xlogy(p, p) - p * log_ps, axis=-1)
  kl = jnp.sum(kl * w) / denom
  log_p1 = jax.nn.log_softmax(s, axis=-1)
  targets = batch["tokens"][:, 1:].astype(jnp.int32)
  ce = -jnp.take_along_axis(log_p1, targets[..., None], axis=-1)[..., 0]
  ce = jnp.sum(ce * w) / denom
  loss = kd_weight * temperature**2 * kl + alpha * ce
  return loss, {"loss": loss, "kl": kl, "ce": ce}


def lm_loss(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
  """Token-mean next-token cross-entropy (the teacher's training loss)."""
  nll, target_mask = contract.lm_token_nll(logits, batch)
  w = target_mask * batch["weight"][:, None].astype(nll.dtype)
  ce = jnp.sum(nll * w) / jnp.maximum(w.sum(), 1.0)
  return ce, {"loss": ce, "ce": ce}


def lm_grad_fn(apply_fn: Callable[..., jax.Array]) -> GradFn:
  """The teacher's gradient for the spine loop: ``grad_fn(params, batch, key)`` of :func:`lm_loss`.

  Args:
    apply_fn: the LM's ``Model.apply`` (run deterministically: no dropout key).

  Returns:
    ``grad_fn(params, batch, key) -> (grads, {"loss", "ce"})`` for
    :func:`trustml.train.loop.fit`.
  """

  def grad_fn(params, batch, key):
    del key  # Deterministic forward pass.

    def loss_fn(p):
      return lm_loss(apply_fn(p, batch), batch)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, aux

  return grad_fn


def kd_grad_fn(
  student_apply: Callable[..., jax.Array],
  teacher_apply: Callable[..., jax.Array],
  teacher_params: object,
  *,
  temperature: float,
  alpha: float,
  kd_weight: float = 1.0,
  combiner: str | None = None,
  perm: np.ndarray | None = None,
) -> GradFn:
  """The student's gradient for the spine loop: the KD objective against a frozen teacher.

  The teacher's parameters are closed over (read-only; never checkpointed with the student),
  so the loop's step stays ``(state, batch) -> (state, aux)`` and shards like any other.

  Args:
    student_apply: the student's ``Model.apply``.
    teacher_apply: the teacher's ``Model.apply``.
    teacher_params: the trained teacher's parameters.
    temperature: KD temperature > 0.
    alpha: weight of the LM cross-entropy >= 0.
    kd_weight: weight of the KL term >= 0.
    combiner: ``None`` (plain KD) or one of :data:`COMBINERS` (teacher-probability modification;
      the batch must carry ``tokens_swapped``).
    perm: the pair-swap permutation ``[V]``, needed with a combiner.

  Returns:
    ``grad_fn(params, batch, key) -> (grads, {"loss", "kl", "ce"})`` for
    :func:`trustml.train.loop.fit`.

  Raises:
    ConfigError: for invalid temperature/weights, unknown combiner or a missing ``perm``.

  Example:
    >>> fn = kd_grad_fn(student.apply, teacher.apply, tp, temperature=2.0, alpha=0.5)  # doctest: +SKIP
  """
  validation.positive("distill.temperature", temperature)
  validation.non_negative("distill.alpha", alpha)
  validation.non_negative("distill.kd_weight", kd_weight)
  if combiner is not None:
    validation.one_of("distill.combiner", combiner, COMBINERS)
    if perm is None:
      raise validation.ConfigError("perm=None is invalid: a combiner needs the swap permutation")
  perm_arr = None if perm is None else jnp.asarray(perm, jnp.int32)

  def grad_fn(params, batch, key):
    del key  # Deterministic forward passes.
    probs = teacher_targets(
      teacher_apply,
      teacher_params,
      batch,
      temperature=temperature,
      combiner=combiner,
      perm=perm_arr,
    )

    def loss_fn(p):
      logits = student_apply(p, batch)
      return kd_loss(
        logits, probs, batch, temperature=temperature, alpha=alpha, kd_weight=kd_weight
      )

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, aux

  return grad_fn


def with_swaps(
  arrays: Mapping[str, np.ndarray],
  id_pairs: np.ndarray,
  pronouns: counterfactual.PronounIds | None = None,
) -> dict[str, np.ndarray]:
  """Adds ``tokens_swapped`` (the token-level counterfactual of ``tokens``) to encoded arrays.

  ``pronouns`` switches on the her/his/him/hers next-token rule
  (:func:`trustml.fairness.counterfactual.pronoun_ids`).
  """
  out = dict(arrays)
  swapped = counterfactual.swap_token_ids(arrays["tokens"], id_pairs, pronouns=pronouns)
  out["tokens_swapped"] = np.asarray(swapped)
  return out


def augment(
  arrays: Mapping[str, np.ndarray],
  id_pairs: np.ndarray,
  mode: str,
  pronouns: counterfactual.PronounIds | None = None,
) -> dict:
  """Counterfactual data augmentation of encoded LM arrays.

  Args:
    arrays: encoded arrays (``tokens``, ``mask``, ``weight``, ...).
    id_pairs: gendered token-id pairs ``[P, 2]``.
    mode: ``none`` (unchanged), ``one_sided`` (each sequence with a gendered token replaced by
      its swap) or ``two_sided`` (originals plus the swaps of those sequences appended).
    pronouns: the pronoun rule of the swap (``None``: the word matching only).

  Returns:
    New arrays with ``tokens_swapped`` set for every row; ``index`` renumbered.

  Raises:
    ConfigError: for an unknown mode.
  """
  validation.one_of("distill.cda", mode, CDA_MODES)
  arrays = with_swaps(arrays, id_pairs, pronouns)
  changed = np.any(arrays["tokens_swapped"] != arrays["tokens"], axis=1)
  if mode == "one_sided":
    out = dict(arrays)
    out["tokens"] = np.where(changed[:, None], arrays["tokens_swapped"], arrays["tokens"])
  elif mode == "two_sided":
    extra = {k: v[changed] for k, v in arrays.items()}
    extra["tokens"] = arrays["tokens_swapped"][changed]
    out = {k: np.concatenate([arrays[k], extra[k]], axis=0) for k in arrays}
  else:
    out = dict(arrays)
  out = with_swaps(out, id_pairs, pronouns)
  out["index"] = np.arange(out["tokens"].shape[0], dtype=np.int32)
  return out


def step_batch(arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, step: int) -> dict:
  """The shuffled training batch of ``step`` restricted to the keys the steps use."""
  batch = batching.shuffled_batch(arrays, batch_size, seed, step)
  return {k: batch[k] for k in _STEP_KEYS if k in batch}


__all__ = [
  "CDA_MODES",
  "COMBINERS",
  "Variant",
  "augment",
  "combine",
  "kd_loss",
  "lm_loss",
  "kd_grad_fn",
  "lm_grad_fn",
  "modify_teacher_probs",
  "parse_variant",
  "step_batch",
  "swap_permutation",
  "teacher_targets",
  "with_swaps",
]
