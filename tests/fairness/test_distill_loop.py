"""Teacher training and CRR distillation through the spine loop.

Oracles: a hand-written optax loop over the same batches (teacher LM and plain KD, to float
re-association: the loop compiles its step as one program); an uninterrupted run (a preempted and resumed one ends with identical parameters); and
the 1-device run (4 fake CPU devices in their own process: losses within 1e-5 relative).
"""

import pathlib
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.conftest import run_on_fake_devices
from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.data import dataset, tokenizers
from trustml.fairness import distill, distill_loop
from trustml.models import registry
from trustml.train import config as train_config
from trustml.train import loop, writers
from trustml.train import workdir as workdir_lib

V, T, N = 16, 8, 32
ID_PAIRS = np.array([[4, 5], [6, 7]], np.int32)


def tiny_setup(num_devices: int = 0, optimizer: str = "sgd"):
  """A tiny crr-style config, corpus arrays, teacher and student Models.

  SGD by default: Adam's first steps divide by ``|g| + eps`` and so turn float re-association
  noise in near-zero gradient entries into O(lr) differences between two compilations.
  """
  c = ml_collections.ConfigDict()
  c.seed = 3
  c.fairness = {"task": "crr_distill", "her_counterpart": "his"}
  c.data = {"dir": "", "seed": 0, "num_lm_sentences": N, "lm_bias": 0.8}
  c.text = train_config.default_text_config(vocab_size=V, max_len=T)
  for role, width in (("teacher", 16), ("student", 8)):
    sec = ml_collections.ConfigDict()
    sec.model = registry.default_model_config("causal_lm")
    sec.model.update(embed_dim=width, num_layers=1, num_heads=2, mlp_dim=2 * width)
    sec.train = train_config.default_train_config(
      batch_size=8,
      num_steps=4,
      optimizer=optimizer,
      learning_rate=0.5 if optimizer == "sgd" else 1e-2,
      log_every=2,
      checkpoint_every=2,
    )
    c[role] = sec
  c.distill = {"temperature": 2.0, "alpha": 0.5, "kd_weight": 1.0}
  c.mesh = train_config.default_mesh_config(num_devices=num_devices)
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, V, (N, T)).astype(np.int32)
  tokens[:, 0] = tokenizers.BOS
  mask = np.arange(T)[None] < rng.integers(3, T + 1, N)[:, None]
  arrays = {
    "tokens": np.where(mask, tokens, 0).astype(np.int32),
    "mask": mask,
    "weight": np.ones((N,), np.float32),
    "index": np.arange(N, dtype=np.int32),
  }
  texts = dataset.TextDataset("tiny", {"train": {"text": np.array(["x"] * N, object)}})
  models = {
    role: registry.build_model(c[role].model, vocab_size=V, num_classes=V, max_len=T)
    for role in ("teacher", "student")
  }
  return c, texts, arrays, models


def distil(
  config, texts, arrays, models, workdir, teacher_params, variant, stop_after_step=None, **kw
):
  """One student of ``variant`` distilled from ``teacher_params``: its Outcome."""
  v = distill.parse_variant(variant)
  data = distill.augment(arrays, ID_PAIRS, v.cda)
  return distill_loop.distil_student(
    config,
    workdir,
    distill_loop.prepared(texts, None, data, arrays, models["student"]),
    models["teacher"],
    teacher_params,
    v,
    distill.swap_permutation(V, ID_PAIRS),
    num_sequences=N,
    stop_after_step=stop_after_step,
    **kw,
  )


def train_both(config, texts, arrays, models, workdir, variant="plain"):
  """Teacher, then one student of ``variant``: their Outcomes."""
  bundle = distill_loop.prepared(texts, None, arrays, arrays, models["teacher"])
  teacher = distill_loop.train_teacher(config, workdir, bundle)
  return teacher, distil(config, texts, arrays, models, workdir, teacher.state.params, variant)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The tiny setup, its workdir and the teacher trained there (once for the module)."""
  config, texts, arrays, models = tiny_setup()
  workdir = tmp_path_factory.mktemp("crr")
  bundle = distill_loop.prepared(texts, None, arrays, arrays, models["teacher"])
  teacher = distill_loop.train_teacher(config, workdir, bundle)
  return config, texts, arrays, models, workdir, teacher


def _reference(model, init_seed, grad_of_loss, arrays, train, data_seed):
  """Hand-written optax loop: the loop's init stream, its optimizer, step_batch batches."""
  opt = train_config.make_optimizer(train, int(train.num_steps))
  params = model.init(rng_lib.RngStreams(init_seed).stream("params"), arrays)
  state = opt.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(grad_of_loss)(params, batch)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for s in range(int(train.num_steps)):
    params, state = step(params, state, distill.step_batch(arrays, 8, data_seed, s))
  return params


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_trees_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_loop_equals_a_hand_written_loop(setup):
  config, texts, arrays, models, workdir, teacher = setup
  student = distil(config, texts, arrays, models, workdir, teacher.state.params, "plain")
  tm, sm = models["teacher"], models["student"]

  def lm(p, b):
    return distill.lm_loss(tm.apply(p, b), b)[0]

  ref_t = _reference(tm, config.seed, lm, arrays, config.teacher.train, config.seed)
  _assert_trees_close(teacher.state.params, ref_t)

  def kd(p, b):
    probs = jax.nn.softmax(tm.apply(ref_t, b).astype(jnp.float32) / 2.0, axis=-1)
    return distill.kd_loss(sm.apply(p, b), probs, b, temperature=2.0, alpha=0.5)[0]

  data = distill.augment(arrays, ID_PAIRS, "none")
  ref_s = _reference(sm, config.seed + 1, kd, data, config.student.train, config.seed)
  _assert_trees_close(student.state.params, ref_s)
  init = sm.init(rng_lib.RngStreams(config.seed + 1).stream("params"), arrays)
  moved = max(
    float(np.abs(np.asarray(x) - np.asarray(y)).max())
    for x, y in zip(jax.tree.leaves(ref_s), jax.tree.leaves(init), strict=True)
  )
  assert moved > 1e-3  # Training moved the student: the comparison is not of two inits.
  # The run contract of each model folder: config, metrics (loss, ce, kl), summary, checkpoints.
  sdir = distill_loop.student_dir(workdir, distill.parse_variant("plain"))
  events = [e for e in writers.read_metrics(sdir) if e["split"] == "train"]
  assert [e["step"] for e in events] == [2, 4]
  assert {"loss", "ce", "kl"} <= set(events[-1])
  assert np.isfinite(writers.read_summary(sdir)["eval/perplexity"])
  assert (sdir / "checkpoints").is_dir() and (workdir / "teacher" / "config.json").is_file()


def test_interrupted_distillation_resumes_to_identical_params(setup, tmp_path):
  config, texts, arrays, models, _, teacher = setup
  args = (config, texts, arrays, models)
  tp, v = teacher.state.params, "cda+mod_mean"
  full = distil(*args, tmp_path / "a", tp, v)
  cut = distil(*args, tmp_path / "b", tp, v, stop_after_step=2)
  assert cut.summary == {"train/interrupted_at": 2}
  resumed = distil(*args, tmp_path / "b", tp, v)
  assert resumed.summary["train/steps"] == 4
  _assert_trees_equal(resumed.state.params, full.state.params)
  # The shared student init computed once equals what the loop draws for each student.
  init = distill_loop.student_init(config, models["student"], arrays)
  shared = distil(*args, tmp_path / "c", tp, v, init_params=init)
  _assert_trees_equal(shared.state.params, full.state.params)
  # A finished teacher folder restores its parameters without another step.
  bundle = distill_loop.prepared(texts, None, arrays, arrays, models["teacher"])
  again = distill_loop.train_teacher(config, setup[4], bundle)
  _assert_trees_equal(again.state.params, tp)
  steps = [e["step"] for e in writers.read_metrics(setup[4] / "teacher") if e["split"] == "train"]
  assert steps == [2, 4]


def test_student_folder_of_another_run_is_refused(setup, tmp_path):
  config = setup[0]
  v = distill.parse_variant("plain")
  workdir_lib.claim(
    distill_loop.student_dir(tmp_path, v), distill_loop.run_config(config, "student", v)
  )
  other = config.copy_and_resolve_references()
  other.distill.temperature = 3.0
  with pytest.raises(validation.ConfigError, match="distill.temperature"):
    distill_loop.check_workdirs(other, tmp_path, [v])
  # The teacher's fingerprint is part of every student's config.
  changed = config.copy_and_resolve_references()
  changed.teacher.train.learning_rate = 0.125
  assert (
    distill_loop.run_config(changed, "student", v).distill.teacher
    != distill_loop.run_config(config, "student", v).distill.teacher
  )


def test_loop_requires_data_for_a_run_that_owns_its_data_section(setup, tmp_path):
  config = setup[0]
  with pytest.raises(validation.ConfigError, match="prepared=None"):
    loop.fit(
      distill_loop.run_config(config, "teacher"),
      tmp_path,
      extra_sections=distill_loop.OWNED_SECTIONS,
    )


SCRIPT = textwrap.dedent(
  """
  import tempfile
  import jax, numpy as np
  assert jax.device_count() == 4, jax.devices()
  from tests.fairness.test_distill_loop import tiny_setup, train_both
  from trustml.train import writers

  def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)

  tmp = tempfile.mkdtemp()
  runs = {}
  for n in (1, 4):
    config, texts, arrays, models = tiny_setup(num_devices=n, optimizer="adam")
    teacher, student = train_both(config, texts, arrays, models, f"{tmp}/d{n}", "cda+mod_max")
    loss = [e["loss"] for e in writers.read_metrics(f"{tmp}/d{n}/students/cda+mod_max")
            if e["split"] == "train"][-1]
    runs[n] = (teacher.summary, student.summary, loss)
  assert runs[4][1]["train/num_devices"] == 4 and runs[1][1]["train/num_devices"] == 1
  for i in (0, 1):
    assert rel(runs[4][i]["eval/loss"], runs[1][i]["eval/loss"]) < 1e-5, (runs[1][i], runs[4][i])
  assert rel(runs[4][2], runs[1][2]) < 1e-5, (runs[1][2], runs[4][2])
  print("distill on 4 devices", runs[1][2], runs[4][2], "OK")
  """
)


def test_distillation_on_4_devices_equals_1_device():
  run_on_fake_devices(SCRIPT, pathlib.Path(__file__).parent)
