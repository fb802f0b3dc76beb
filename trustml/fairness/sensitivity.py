"""Prediction sensitivity and accumulated prediction sensitivity (APS).

After Krishna et al., "Measuring Fairness of Text Classifiers via Prediction Sensitivity"
(ACL 2022). For one example ``x`` with token embeddings ``e ∈ R^{T×D}``:

* ``J(x)``: the Jacobian of the task outputs ``f(x) ∈ R^C`` (class probabilities by default)
  with respect to the input features. Krishna et al. define ``PS = wᵀ |J| v`` with ``|J|`` the
  element-wise magnitude of ``∂f/∂x``; for text the input is the token-embedding matrix.
* ``w ∈ R^C``: class weighting: the one-hot predicted class (default), the predicted
  probabilities, or uniform.
* ``v``: feature weighting from a *protected-status model* ``g`` (a second classifier that
  predicts the protected attribute, e.g. gender): the magnitude of the input gradient of
  ``g``'s predicted-class probability, reduced like ``J`` and normalised (default: to sum 1
  over the valid features).
* prediction sensitivity ``PS(x) = wᵀ |J(x)| v``; ``APS`` is its weighted mean over a dataset.

Modelling choices are parameters (:class:`ApsOptions`); the defaults follow the paper's
Jacobian magnitude:

* ``reduction`` — what one input feature is. ``"l1"`` (default): a token, with feature value
  ``Σ_d |∂f/∂e_td|`` (the Jacobian magnitude summed over its embedding coordinates);
  ``"per_dimension"``: every embedding coordinate ``(t, d)`` is its own feature (``J`` is
  ``[C, T·D]`` and so is ``v``); ``"l2"``: ``‖∂f/∂e_t‖₂``; ``"sum"``: ``Σ_d ∂f/∂e_td``;
  ``"grad_input"``: ``Σ_d e_td ∂f/∂e_td`` (gradient × input, the first-order change of ``f``
  when token ``t`` is zeroed; trustml's earlier default, invariant to rescaling the
  embeddings, which ``|∂f/∂e|`` is not: doubling the table and halving the next layer halves
  the l1 APS).
* ``abs_of``: ``"jacobian"`` (default; ``wᵀ|J|v``) or ``"score"`` (``|wᵀ J v|``: signed token
  contributions may cancel).
* ``normalize`` for ``v``: ``"l1"`` (default, ``v`` sums to 1), ``"max"`` or ``"none"``.
* ``outputs``: ``"probs"`` (default) or ``"logits"``.

Gradients are computed with ``jax.jacrev`` per example, ``vmap``ped over the batch and jitted.
Padding tokens (``mask == 0``) and padding examples (``weight == 0``) contribute nothing.
"""

import dataclasses
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from trustml.core import validation
from trustml.core.types import Batch, Params
from trustml.models import contract

REDUCTIONS = ("l1", "per_dimension", "l2", "sum", "grad_input")
ABS_OF = ("jacobian", "score")
NORMALIZE = ("l1", "max", "none")
CLASS_WEIGHTINGS = ("predicted", "probs", "uniform")
OUTPUTS = ("probs", "logits")


@dataclasses.dataclass(frozen=True)
class ApsOptions:
  """Modelling choices of prediction sensitivity (see the module docstring).

  Attributes:
    reduction: how ``∂f/∂e_t ∈ R^D`` becomes one number per token.
    abs_of: where the absolute value goes.
    normalize: normalisation of the protected-attribute weights ``v``.
    class_weighting: ``w``: one-hot predicted class, predicted probabilities, or uniform.
    outputs: differentiate probabilities or logits.
  """

  reduction: str = "l1"
  abs_of: str = "jacobian"
  normalize: str = "l1"
  class_weighting: str = "predicted"
  outputs: str = "probs"

  def validate(self, prefix: str = "aps") -> "ApsOptions":
    """Checks every field.

    Raises:
      ConfigError: naming the field and the allowed values.
    """
    validation.one_of(f"{prefix}.reduction", self.reduction, REDUCTIONS)
    validation.one_of(f"{prefix}.abs_of", self.abs_of, ABS_OF)
    validation.one_of(f"{prefix}.normalize", self.normalize, NORMALIZE)
    validation.one_of(f"{prefix}.class_weighting", self.class_weighting, CLASS_WEIGHTINGS)
    validation.one_of(f"{prefix}.outputs", self.outputs, OUTPUTS)
    return self


def _outputs_fn(model: contract.Model, params: Params, example: Batch, outputs: str):
  def f(emb: jax.Array) -> jax.Array:
    logits = model.apply_from_embeddings(params, emb[None], example)[0].astype(jnp.float32)
    return jax.nn.softmax(logits) if outputs == "probs" else logits

  return f


def _reduce(jac: jax.Array, emb: jax.Array, reduction: str) -> jax.Array:
  """``[C, T, D]`` Jacobian -> ``[C, F]`` features (``F = T``, or ``T·D`` per dimension)."""
  if reduction == "per_dimension":
    return jac.reshape(jac.shape[0], -1)
  if reduction == "grad_input":
    return jnp.einsum("ctd,td->ct", jac, emb)
  if reduction == "sum":
    return jac.sum(-1)
  if reduction == "l1":
    return jnp.abs(jac).sum(-1)
  return jnp.sqrt((jac**2).sum(-1))


def token_jacobian(
  model: contract.Model,
  params: Params,
  example: Batch,
  reduction: str = "l1",
  outputs: str = "probs",
) -> tuple[jax.Array, jax.Array]:
  """Reduced Jacobian ``[C, F]`` of one example's outputs, and those outputs ``[C]``.

  Args:
    model: a classifier Model.
    params: its parameters.
    example: one example (arrays without the batch axis).
    reduction: see :class:`ApsOptions`.
    outputs: ``"probs"`` or ``"logits"``.

  Returns:
    ``(J, f)``; features of padding tokens are 0.
  """
  batch1 = jax.tree.map(lambda a: a[None], example)
  emb = model.embed(params, batch1)[0]
  f = _outputs_fn(model, params, batch1, outputs)
  jac = jax.jacrev(f)(emb)  # [C, T, D]
  jac = jac * example["mask"].astype(jnp.float32)[None, :, None]
  return _reduce(jac, emb, reduction), f(emb)


def protected_weights(
  model: contract.Model, params: Params, example: Batch, options: ApsOptions
) -> jax.Array:
  """``v ∈ R^F``: normalised magnitude of the protected-status model's reduced input gradient.

  The gradient is that of the protected model's predicted-class probability (logit when
  ``options.outputs == "logits"``).
  """
  jac, out = token_jacobian(model, params, example, options.reduction, options.outputs)
  grad = jnp.abs(jac[jnp.argmax(out)])  # padding features are already 0
  if options.normalize == "l1":
    return grad / jnp.maximum(grad.sum(), 1e-12)
  if options.normalize == "max":
    return grad / jnp.maximum(grad.max(), 1e-12)
  return grad


def _class_weights(out: jax.Array, options: ApsOptions) -> jax.Array:
  if options.class_weighting == "predicted":
    return jax.nn.one_hot(jnp.argmax(out), out.shape[-1], dtype=jnp.float32)
  if options.class_weighting == "probs":
    return out if options.outputs == "probs" else jax.nn.softmax(out)
  return jnp.full(out.shape, 1.0 / out.shape[-1], jnp.float32)


def check_same_vocabulary(
  task_model: contract.Model,
  task_params: Params,
  protected_model: contract.Model,
  protected_params: Params,
  task_tokenizer=None,
  protected_tokenizer=None,
) -> None:
  """Rejects a protected-status model that does not read the task model's token ids.

  Raises:
    ConfigError: if the embedding tables have different numbers of rows, or the two tokenizers
      (when both given) differ.
  """
  v_task = int(task_model.embedding_table(task_params).shape[0])
  v_prot = int(protected_model.embedding_table(protected_params).shape[0])
  if v_task != v_prot:
    raise validation.ConfigError(
      f"protected-status model vocabulary ({v_prot} tokens) is invalid: it must equal the task "
      f"model's vocabulary ({v_task} tokens)"
    )
  if task_tokenizer is not None and protected_tokenizer is not None:
    if task_tokenizer != protected_tokenizer:
      raise validation.ConfigError(
        "protected-status model tokenizer is invalid: it must be the task model's tokenizer "
        "(same vocabulary, same ids)"
      )


def make_sensitivity_fn(
  task_model: contract.Model, protected_model: contract.Model, options: ApsOptions
) -> Callable[[Params, Params, Batch], jax.Array]:
  """A jitted ``fn(task_params, protected_params, batch) -> PS [B]`` (0 for weight-0 rows).

  Args:
    task_model: the classifier being audited.
    protected_model: the protected-status classifier (same vocabulary).
    options: modelling choices.

  Returns:
    The jitted, ``vmap``ped per-example sensitivity function.
  """
  options.validate()

  def one(task_params, protected_params, example):
    jac, out = token_jacobian(task_model, task_params, example, options.reduction, options.outputs)
    v = protected_weights(protected_model, protected_params, example, options)
    w = _class_weights(out, options)
    if options.abs_of == "jacobian":
      ps = w @ jnp.abs(jac) @ v
    else:
      ps = jnp.abs(w @ jac @ v)
    return ps * example["weight"].astype(jnp.float32)

  def batched(task_params, protected_params, batch):
    example_keys = ("tokens", "mask", "label", "weight")
    examples = {k: batch[k] for k in example_keys if k in batch}
    return jax.vmap(one, in_axes=(None, None, 0))(task_params, protected_params, examples)

  return jax.jit(batched)


def accumulated_prediction_sensitivity(
  task_model: contract.Model,
  task_params: Params,
  protected_model: contract.Model,
  protected_params: Params,
  batches: Iterable[Batch],
  options: ApsOptions = ApsOptions(),
) -> tuple[float, np.ndarray]:
  """APS: the weighted mean of ``PS(x)`` over a dataset, and the per-example values.

  Args:
    task_model: classifier being audited.
    task_params: its parameters.
    protected_model: protected-status classifier over the same vocabulary.
    protected_params: its parameters.
    batches: fixed-shape batches (``tokens``, ``mask``, ``weight``); padding rows weight 0.
    options: modelling choices.

  Returns:
    ``(aps, per_example)`` where ``per_example`` holds PS of the rows with weight > 0, in order.

  Raises:
    ConfigError: on invalid options or mismatched vocabularies (before any compute), or a
      non-finite PS (NaN parameters or embeddings).
  """
  options.validate()
  check_same_vocabulary(task_model, task_params, protected_model, protected_params)
  fn = make_sensitivity_fn(task_model, protected_model, options)
  values, weights = [], []
  for batch in batches:
    ps = np.asarray(fn(task_params, protected_params, batch), np.float64)
    w = np.asarray(batch["weight"], np.float64)
    keep = w > 0
    values.append(ps[keep] / w[keep])
    weights.append(w[keep])
  if not values or not np.concatenate(weights).size:
    raise validation.ConfigError("batches are invalid: no example with weight > 0")
  per_example = validation.finite_array("prediction sensitivity PS(x)", np.concatenate(values))
  w = np.concatenate(weights)
  return float((per_example * w).sum() / w.sum()), per_example


__all__ = [
  "ABS_OF",
  "CLASS_WEIGHTINGS",
  "NORMALIZE",
  "OUTPUTS",
  "REDUCTIONS",
  "ApsOptions",
  "accumulated_prediction_sensitivity",
  "check_same_vocabulary",
  "make_sensitivity_fn",
  "protected_weights",
  "token_jacobian",
]
