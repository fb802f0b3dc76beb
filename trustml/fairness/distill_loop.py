"""Teacher LM training and student distillation through the spine's training loop.

Each model of the CRR experiment is one run of :func:`trustml.train.loop.fit` in its own
sub-folder of the experiment's workdir (``teacher/``, ``students/<variant>/``), so it gets what
every spine run gets: ``config.json`` (the model's own config, :func:`run_config`),
``metrics.jsonl`` and TensorBoard events (``loss``, ``ce`` and, for students, ``kl`` every
``train.log_every`` steps; eval perplexity at the end), progress and ETA in the log, orbax
checkpoints every ``train.checkpoint_every`` steps from which a rerun resumes exactly, the
workdir contract (a folder holding another model's run is refused), and data-parallel steps on
the mesh of the ``mesh`` section (batch rows over ``data``, parameters replicated or FSDP).

The objectives are :func:`trustml.fairness.distill.lm_grad_fn` (teacher) and
:func:`trustml.fairness.distill.kd_grad_fn` (students, through :class:`FrozenTeacherKd`: the
frozen teacher's parameters are the gradient mechanism's state, so they reach the step as an
argument, shard like the state and are saved in the student's checkpoints); batches are
:func:`trustml.fairness.distill.step_batch` of ``(seed, step)``, the same data order for the
teacher and every student. Students initialise from the ``params`` stream of ``seed + 1``
(the teacher's is ``seed``), so no student shares the teacher's initial draws.
"""

import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from trustml.core import rng as rng_lib
from trustml.data import dataset
from trustml.fairness import distill
from trustml.models import contract
from trustml.train import config as train_config
from trustml.train import experiment, loop
from trustml.train import workdir as workdir_lib

OWNED_SECTIONS = ("data", "fairness", "distill")
TRAIN_METRICS = ("loss", "ce", "kl")


class FrozenTeacherKd:
  """The KD gradient for the loop, with the frozen teacher's parameters as its state.

  A stateful gradient mechanism (:class:`trustml.train.loop.StatefulGradFn`): ``init`` returns
  the teacher's parameters, which then ride in the loop's ``TrainState.grad_state``, placed
  with the state's shardings (replicated, or FSDP-split), passed to the jitted step as an
  argument rather than compiled into it as constants, returned unchanged, and saved in every
  student checkpoint (a student's checkpoint holds the teacher it is distilled from).
  """

  def __init__(self, student_apply: Any, teacher_apply: Any, teacher_params: Any, **kd: Any):
    distill.kd_grad_fn(student_apply, teacher_apply, teacher_params, **kd)  # Validates kd.
    self._apply = (student_apply, teacher_apply)
    self._teacher_params = teacher_params
    self._kd = kd

  def init(self, params: Any) -> Any:
    """The teacher's parameters (the mechanism's state)."""
    del params
    return self._teacher_params

  def __call__(self, params, batch, key, grad_state):
    grad_fn = distill.kd_grad_fn(*self._apply, grad_state, **self._kd)
    grads, aux = grad_fn(params, batch, key)
    return grads, aux, grad_state


def _section(value: Any) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(value.to_dict() if hasattr(value, "to_dict") else dict(value))


def run_config(
  config: Any, role: str, variant: distill.Variant | None = None
) -> ml_collections.ConfigDict:
  """The spine config of one model of a ``crr_distill`` config.

  Args:
    config: the experiment's config (``seed``, ``data``, ``text``, ``teacher``, ``student``,
      ``distill``, ``fairness``, optional ``mesh``).
    role: ``teacher`` or ``student``.
    variant: the student's variant (required for a student).

  Returns:
    ``seed``, ``data``, ``text``, ``model``, ``train``, ``fairness`` (the swap), ``mesh`` when
    set and, for a student, ``distill`` (objective, variant and the teacher's fingerprint, so a
    student's folder holds a run distilled from exactly that teacher).
  """
  sub = ml_collections.ConfigDict()
  sub.seed = int(config.seed) + (0 if role == "teacher" else 1)
  sub.data = _section(config.data)
  sub.text = _section(config.text)
  sub.model = _section(config[role].model)
  sub.train = _section(config[role].train)
  sub.fairness = ml_collections.ConfigDict({"her_counterpart": config.fairness.her_counterpart})
  if "mesh" in config:
    sub.mesh = _section(config.mesh)
  if role == "student":
    dc = config.distill
    sub.distill = ml_collections.ConfigDict(
      {
        "variant": variant.name,
        "cda": variant.cda,
        "combiner": variant.combiner or "",
        "temperature": float(dc.temperature),
        "alpha": float(dc.alpha),
        "kd_weight": float(dc.kd_weight),
        "data_seed": int(config.seed),
        "teacher": workdir_lib.fingerprint(run_config(config, "teacher")),
      }
    )
  return sub


def teacher_dir(workdir: str | os.PathLike) -> pathlib.Path:
  """The teacher's run folder."""
  return pathlib.Path(workdir) / "teacher"


def student_dir(workdir: str | os.PathLike, variant: distill.Variant) -> pathlib.Path:
  """The run folder of one student."""
  return pathlib.Path(workdir) / "students" / variant.name


def check_workdirs(
  config: Any, workdir: str | os.PathLike, variants: Iterable[distill.Variant]
) -> None:
  """Refuses, before any compute, a model folder that holds another model's run.

  Raises:
    ConfigError: one line naming the folder and the fields that differ.
  """
  workdir_lib.check(teacher_dir(workdir), run_config(config, "teacher"))
  for v in variants:
    workdir_lib.check(student_dir(workdir, v), run_config(config, "student", v))


def prepared(
  corpus: dataset.TextDataset,
  tokenizer: Any,
  train: Mapping[str, np.ndarray],
  eval_arrays: Mapping[str, np.ndarray],
  model: contract.Model,
) -> experiment.Prepared:
  """The loop's bundle of one model: the corpus, its tokenizer and arrays, the Model."""
  return experiment.Prepared(corpus, tokenizer, train, eval_arrays, model)


def student_init(config: Any, model: contract.Model, example_batch: Mapping[str, Any]) -> Any:
  """The students' shared initial parameters: ``model.init`` on the ``params`` stream of
  ``seed + 1`` (what the loop would draw for each student), computed once for all variants."""
  key = rng_lib.RngStreams(int(config.seed) + 1).stream("params")
  return jax.jit(model.init)(key, example_batch)


def _fit(
  sub, workdir, bundle, grad_fn, total, stop_after_step, data_seed, init_params=None
) -> loop.Outcome:
  bs = int(sub.train.batch_size)

  def batch_fn(step: int) -> dict[str, np.ndarray]:
    return distill.step_batch(bundle.train, bs, data_seed, step)

  return loop.fit(
    sub,
    workdir,
    prepared=bundle,
    grad_fn=grad_fn,
    batch_fn=batch_fn,
    extra_sections=OWNED_SECTIONS,
    stop_after_step=stop_after_step,
    total_steps=total,
    train_metrics=TRAIN_METRICS,
    init_params=init_params,
  )


def train_teacher(
  config: Any,
  workdir: str | os.PathLike,
  bundle: experiment.Prepared,
  *,
  stop_after_step: int | None = None,
) -> loop.Outcome:
  """Trains (or resumes, or restores when finished) the teacher LM in ``<workdir>/teacher``.

  Args:
    config: the experiment's config.
    workdir: the experiment's workdir.
    bundle: :func:`prepared` with the teacher's Model.
    stop_after_step: simulate preemption (checkpoint and return after this many steps).

  Returns:
    The loop's Outcome (``state.params``: the teacher's parameters).
  """
  sub = run_config(config, "teacher")
  n = int(bundle.train["tokens"].shape[0])
  total = train_config.num_train_steps(sub.train, n)
  grad_fn = distill.lm_grad_fn(bundle.model.apply)
  return _fit(sub, teacher_dir(workdir), bundle, grad_fn, total, stop_after_step, int(config.seed))


def distil_student(
  config: Any,
  workdir: str | os.PathLike,
  bundle: experiment.Prepared,
  teacher: contract.Model,
  teacher_params: Any,
  variant: distill.Variant,
  perm: np.ndarray,
  *,
  num_sequences: int,
  stop_after_step: int | None = None,
  init_params: Any = None,
) -> loop.Outcome:
  """Distils (or resumes) one student in ``<workdir>/students/<variant>``.

  Args:
    config: the experiment's config.
    workdir: the experiment's workdir.
    bundle: :func:`prepared` with the student's Model and the variant's (augmented) arrays
      (:func:`trustml.fairness.distill.augment`).
    teacher: the teacher's Model.
    teacher_params: the trained teacher's parameters.
    variant: the student's variant.
    perm: the pair-swap permutation of the vocabulary (used with a combiner).
    num_sequences: sequences of the un-augmented corpus: ``num_epochs`` counts these, so every
      variant takes the same number of steps.
    stop_after_step: simulate preemption (checkpoint and return after this many steps).
    init_params: :func:`student_init` when already computed (the variants share it); the
      loop draws the same parameters itself when ``None``.

  Returns:
    The loop's Outcome (``state.params``: the student's parameters).
  """
  sub = run_config(config, "student", variant)
  dc = config.distill
  grad_fn = FrozenTeacherKd(
    bundle.model.apply,
    teacher.apply,
    teacher_params,
    temperature=float(dc.temperature),
    alpha=float(dc.alpha),
    kd_weight=float(dc.kd_weight),
    combiner=variant.combiner,
    perm=perm if variant.combiner else None,
  )
  total = train_config.num_train_steps(sub.train, int(num_sequences))
  return _fit(
    sub,
    student_dir(workdir, variant),
    bundle,
    grad_fn,
    total,
    stop_after_step,
    int(config.seed),
    init_params,
  )


__all__ = [
  "FrozenTeacherKd",
  "OWNED_SECTIONS",
  "TRAIN_METRICS",
  "check_workdirs",
  "distil_student",
  "prepared",
  "run_config",
  "student_dir",
  "student_init",
  "teacher_dir",
  "train_teacher",
]
