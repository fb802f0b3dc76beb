"""Tests of counterfactual role-reversal distillation: objective, mitigations, gradients.

Training through the spine loop (resume, mesh) is tested in test_distill_loop.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trustml.core import validation
from trustml.data import tokenizers
from trustml.fairness import crr, distill
from trustml.models import registry

V, T = 16, 8
ID_PAIRS = np.array([[4, 5], [6, 7]], np.int32)  # e.g. he/she, his/her.


def _rand_probs(key, shape):
  return jax.nn.softmax(3.0 * jax.random.normal(key, shape), axis=-1)


# --- combiners and the teacher-probability modification --------------------------------------


def test_combiners_equal_hand_computation():
  p = jnp.array([0.5, 0.3, 0.2])
  q = jnp.array([0.1, 0.6, 0.3])
  np.testing.assert_allclose(distill.combine(p, q, "mean"), [0.3, 0.45, 0.25], rtol=1e-6)
  np.testing.assert_allclose(
    distill.combine(p, q, "max"), np.array([0.5, 0.6, 0.3]) / 1.4, rtol=1e-6
  )
  g = np.sqrt([0.05, 0.18, 0.06])
  np.testing.assert_allclose(distill.combine(p, q, "geometric_mean"), g / g.sum(), rtol=1e-6)
  with pytest.raises(validation.ConfigError, match="combiner"):
    distill.combine(p, q, "median")


def test_combiners_give_valid_distributions():
  kp, kq = jax.random.split(jax.random.key(0))
  p, q = _rand_probs(kp, (3, 5, V)), _rand_probs(kq, (3, 5, V))
  for combiner in distill.COMBINERS:
    out = np.asarray(jax.jit(lambda a, b, c=combiner: distill.combine(a, b, c))(p, q), np.float64)
    assert (out >= 0).all()
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_swap_permutation_is_pair_swap_involution():
  perm = distill.swap_permutation(V, ID_PAIRS)
  expect = np.arange(V)
  expect[[4, 5, 6, 7]] = [5, 4, 7, 6]
  np.testing.assert_array_equal(perm, expect)
  np.testing.assert_array_equal(perm[perm], np.arange(V))


def test_modification_is_symmetric_in_the_gendered_pair():
  # Swapping x and its counterfactual permutes the modified distribution by the pair swap.
  perm = distill.swap_permutation(V, ID_PAIRS)
  kp, kq = jax.random.split(jax.random.key(1))
  p, q = _rand_probs(kp, (2, 3, V)), _rand_probs(kq, (2, 3, V))
  for combiner in distill.COMBINERS:
    fn = jax.jit(lambda a, b, c=combiner: distill.modify_teacher_probs(a, b, perm, c))
    out = np.asarray(fn(p, q))
    np.testing.assert_allclose(fn(q, p), out[..., perm], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    if combiner == "mean":  # By hand: out[he] = (p[he] + q[she]) / 2, out[v] = (p + q) / 2.
      np.testing.assert_allclose(out[..., 4], 0.5 * (p[..., 4] + q[..., 5]), rtol=1e-6)
      np.testing.assert_allclose(out[..., 9], 0.5 * (p[..., 9] + q[..., 9]), rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
  """A tiny teacher/student pair, their params and a batch with gendered tokens."""

  def build(width, seed):
    cfg = registry.default_model_config("causal_lm")
    cfg.update(embed_dim=width, num_layers=1, num_heads=2, mlp_dim=2 * width)
    model = registry.build_model(cfg, vocab_size=V, num_classes=V, max_len=T)
    rng = np.random.default_rng(seed)
    return model, rng

  teacher, rng = build(16, 0)
  student, _ = build(8, 1)
  n = 24
  tokens = rng.integers(4, V, (n, T)).astype(np.int32)
  tokens[:, 0] = tokenizers.BOS
  lengths = rng.integers(3, T + 1, n)
  mask = np.arange(T)[None] < lengths[:, None]
  tokens = np.where(mask, tokens, 0).astype(np.int32)
  tokens[:4, 1:] = np.where(mask[:4, 1:], 9, 0)  # Rows 0-3 hold no gendered token.
  arrays = {
    "tokens": tokens,
    "mask": mask,
    "weight": np.ones((n,), np.float32),
    "index": np.arange(n, dtype=np.int32),
  }
  init_batch = {k: v[:2] for k, v in arrays.items()}
  tp = jax.jit(teacher.init)(jax.random.key(0), init_batch)
  sp = jax.jit(student.init)(jax.random.key(1), init_batch)
  return teacher, student, tp, sp, arrays


@pytest.mark.parametrize("combiner", ["geometric_mean"])
def test_teacher_targets_symmetric_on_a_real_teacher(tiny, combiner):
  teacher, _, tp, _, arrays = tiny
  perm = distill.swap_permutation(V, ID_PAIRS)
  batch = distill.with_swaps(arrays, ID_PAIRS)
  flipped = {**batch, "tokens": batch["tokens_swapped"], "tokens_swapped": batch["tokens"]}
  kw = dict(temperature=2.0, combiner=combiner, perm=jnp.asarray(perm))
  fn = jax.jit(lambda b: distill.teacher_targets(teacher.apply, tp, b, **kw))
  keys = ("tokens", "mask", "weight", "tokens_swapped")
  a = np.asarray(fn({k: batch[k] for k in keys}))
  b = np.asarray(fn({k: flipped[k] for k in keys}))
  np.testing.assert_allclose(b, a[..., perm], rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
  # Rows without gendered tokens: x == x~, so the gendered probabilities are made equal
  # for max and geometric mean (p[he] vs p[she] -> symmetric combination).
  np.testing.assert_allclose(a[:4, :, 4], a[:4, :, 5], rtol=1e-5)
  # ... which the unmodified teacher does not do.
  plain = jax.jit(
    lambda b: distill.teacher_targets(
      teacher.apply, tp, b, temperature=2.0, combiner=None, perm=None
    )
  )
  p = np.asarray(plain({k: batch[k] for k in keys}))
  assert np.abs(p[:4, :, 4] - p[:4, :, 5]).max() > 1e-4


# --- the KD objective ------------------------------------------------------------------------


def test_kd_loss_equals_float64_hand_computation():
  rng = np.random.default_rng(0)
  b, t, v = 3, 5, 7
  s = rng.normal(size=(b, t, v)) * 2
  tl = rng.normal(size=(b, t, v)) * 2
  tokens = rng.integers(0, v, (b, t)).astype(np.int32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], bool)
  weight = np.array([1.0, 1.0, 0.0], np.float32)
  tau, alpha, kdw = 2.5, 0.3, 0.7

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  pt = softmax(tl / tau)
  kl_sum = ce_sum = count = 0.0
  for i in range(b):
    for j in range(t - 1):
      if not (mask[i, j + 1] and weight[i]):
        continue
      ps = softmax(s[i, j] / tau)
      kl_sum += np.sum(pt[i, j] * (np.log(pt[i, j]) - np.log(ps)))
      ce_sum += -np.log(softmax(s[i, j])[tokens[i, j + 1]])
      count += 1
  expect = kdw * tau**2 * kl_sum / count + alpha * ce_sum / count
  batch = {"tokens": tokens, "mask": mask, "weight": weight}
  loss, aux = jax.jit(
    lambda a, b, c: distill.kd_loss(a, b, c, temperature=tau, alpha=alpha, kd_weight=kdw)
  )(jnp.asarray(s, jnp.float32), jnp.asarray(pt, jnp.float32), batch)
  np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
  np.testing.assert_allclose(float(aux["kl"]), kl_sum / count, rtol=1e-5)
  np.testing.assert_allclose(float(aux["ce"]), ce_sum / count, rtol=1e-5)


# --- mitigation off equals plain KD ----------------------------------------------------------


def _kd_grads(tiny, variant, id_pairs, steps=3):
  """The KD gradient function's direction on the first ``steps`` batches of ``variant``."""
  teacher, student, tp, sp, arrays = tiny
  perm = distill.swap_permutation(V, id_pairs)
  data = distill.augment(arrays, id_pairs, variant.cda)
  grad_fn = jax.jit(
    distill.kd_grad_fn(
      student.apply,
      teacher.apply,
      tp,
      temperature=2.0,
      alpha=0.5,
      combiner=variant.combiner,
      perm=perm if variant.combiner else None,
    )
  )
  key = jax.random.key(0)
  return [grad_fn(sp, distill.step_batch(data, 8, 0, s), key)[0] for s in range(steps)]


def _plain_kd_grads(tiny, steps=3, tau=2.0, alpha=0.5):
  """Plain KD written directly: teacher softmax targets, kd_loss, jax.grad."""
  teacher, student, tp, sp, arrays = tiny

  def loss_fn(params, batch):
    probs = jax.nn.softmax(teacher.apply(tp, batch).astype(jnp.float32) / tau, axis=-1)
    return distill.kd_loss(
      student.apply(params, batch),
      jax.lax.stop_gradient(probs),
      batch,
      temperature=tau,
      alpha=alpha,
    )[0]

  grad = jax.jit(jax.grad(loss_fn))
  out = []
  for s in range(steps):
    batch = {k: v for k, v in distill.step_batch(arrays, 8, 0, s).items() if k != "tokens_swapped"}
    out.append(grad(sp, batch))
  return out


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_mitigation_off_equals_plain_kd_bit_for_bit(tiny):
  ref = _plain_kd_grads(tiny)
  _assert_trees_equal(_kd_grads(tiny, distill.parse_variant("plain"), ID_PAIRS), ref)
  # With no gendered pairs, CDA adds nothing and the mean modification is the identity.
  none = np.zeros((0, 2), np.int32)
  _assert_trees_equal(_kd_grads(tiny, distill.parse_variant("cda+mod_mean"), none), ref)
  # ... which a real pair list does change.
  changed = _kd_grads(tiny, distill.parse_variant("cda+mod_mean"), ID_PAIRS)
  diff = max(
    float(np.abs(np.asarray(x) - np.asarray(y)).max())
    for x, y in zip(jax.tree.leaves(changed), jax.tree.leaves(ref), strict=True)
  )
  assert diff > 1e-6


# --- CDA and variants ------------------------------------------------------------------------


def test_augment_one_and_two_sided(tiny):
  *_, arrays = tiny
  changed = np.any(np.isin(arrays["tokens"], ID_PAIRS), axis=1)
  assert not changed[:4].any() and changed.sum() > 4
  table = distill.swap_permutation(V, ID_PAIRS)
  none = distill.augment(arrays, ID_PAIRS, "none")
  np.testing.assert_array_equal(none["tokens"], arrays["tokens"])
  np.testing.assert_array_equal(none["tokens_swapped"], table[arrays["tokens"]])
  one = distill.augment(arrays, ID_PAIRS, "one_sided")
  np.testing.assert_array_equal(one["tokens"], table[arrays["tokens"]])
  np.testing.assert_array_equal(one["tokens_swapped"], arrays["tokens"])
  two = distill.augment(arrays, ID_PAIRS, "two_sided")
  n = arrays["tokens"].shape[0]
  assert two["tokens"].shape[0] == n + changed.sum()
  np.testing.assert_array_equal(two["tokens"][:n], arrays["tokens"])
  np.testing.assert_array_equal(two["tokens"][n:], table[arrays["tokens"][changed]])
  np.testing.assert_array_equal(two["mask"][n:], arrays["mask"][changed])
  np.testing.assert_array_equal(two["index"], np.arange(two["tokens"].shape[0]))
  with pytest.raises(validation.ConfigError):
    distill.augment(arrays, ID_PAIRS, "three_sided")


def test_parse_variant_and_errors():
  assert distill.parse_variant("plain") == distill.Variant("plain")
  assert distill.parse_variant("cda") == distill.Variant("cda", "two_sided", None)
  v = distill.parse_variant("cda_one_sided+mod_geometric_mean")
  assert (v.cda, v.combiner) == ("one_sided", "geometric_mean")
  for bad in ("mod_median", "cda+cda_one_sided", "mod_max+mod_mean", "teacher"):
    with pytest.raises(validation.ConfigError):
      distill.parse_variant(bad)
  with pytest.raises(validation.ConfigError, match="combiner"):
    distill.kd_grad_fn(
      lambda p, b: b,
      lambda p, b: b,
      None,
      temperature=1.0,
      alpha=0.5,
      combiner="median",
      perm=np.arange(4),
    )
  with pytest.raises(validation.ConfigError, match="perm"):
    distill.kd_grad_fn(
      lambda p, b: b, lambda p, b: b, None, temperature=1.0, alpha=0.5, combiner="max"
    )
  with pytest.raises(validation.ConfigError, match="temperature"):
    distill.kd_grad_fn(lambda p, b: b, lambda p, b: b, None, temperature=0.0, alpha=0.5)


def test_profession_pronoun_bias_on_a_fixed_distribution():
  tok = tokenizers.WordTokenizer.build(["he she his her the said that"], vocab_size=30)
  he, she, his, her = (tok.token_to_id(w) for w in ("he", "she", "his", "her"))

  def apply_fn(params, batch):
    b, t = batch["tokens"].shape
    logits = jnp.full((b, t, tok.vocab_size), -30.0)
    logits = logits.at[..., he].set(jnp.log(0.6)).at[..., she].set(jnp.log(0.2))
    return logits.at[..., his].set(jnp.log(0.6)).at[..., her].set(jnp.log(0.2))

  out = crr.profession_pronoun_bias(apply_fn, None, tok, 12)
  assert out["template_bias"] == pytest.approx(0.5, rel=1e-6)  # (0.6 - 0.2) / 0.8
  assert out["template_stereotype_gap"] == pytest.approx(0.0, abs=1e-9)


def test_run_rejects_unknown_combiner_before_compute(tmp_path):
  from configs import crr_distill

  config = crr_distill.get_config("smoke,variants=plain+mod_median")
  with pytest.raises(validation.ConfigError, match="combiner"):
    crr.run(config, tmp_path)
  assert not any(tmp_path.iterdir())


def test_build_tokenizer_closes_vocabulary_under_the_swap():
  pairs = {"duke": "duchess", "duchess": "duke", "he": "she", "she": "he"}
  texts = ["the the duke said that he would go"] * 3 + ["a rare word duchess"]
  tok = crr.build_tokenizer(texts, pairs, vocab_size=11, min_count=2)
  assert tok.vocab_size == 11
  for w in ("duke", "duchess", "he", "she"):
    assert tok.token_to_id(w) != tokenizers.UNK, w
  # She and duchess (count < min_count) replace the last two ordinary words (ties broken
  # alphabetically: ..., "that", "would"); the most frequent word stays.
  assert tok.token_to_id("the") != tokenizers.UNK
  assert tok.token_to_id("that") == tok.token_to_id("would") == tokenizers.UNK


def test_smoke_config_runs_end_to_end(tmp_path, shared_data_dir):
  del shared_data_dir  # The smoke config reads the gender pairs and BOLD from the data folder.
  from configs import crr_distill
  from trustml.train import writers

  config = crr_distill.get_config("smoke,variants=cda&mod_mean")
  config.generation.gender_prompts = False
  summary = crr.run(config, tmp_path)
  for key in ("generation/gender_disparity", "generation/perplexity"):
    assert np.isfinite(summary[key])
  assert summary["generation/headline_variant"] == "cda+mod_mean"
  assert np.isfinite(summary["generation/teacher/template_stereotype_gap"])
  assert writers.read_summary(tmp_path)["generation/perplexity"] == summary["generation/perplexity"]
  assert (tmp_path / "plots" / "gender_disparity_by_profession.png").is_file()
  assert (tmp_path / "teacher" / "checkpoints").is_dir()
  student = writers.read_summary(tmp_path / "students" / "cda+mod_mean")
  assert student["eval/perplexity"] == summary["generation/perplexity"]  # One measurement.
  assert student["train/steps"] == config.student.train.num_steps
  assert "| cda+mod_mean |" in (tmp_path / "crr_table.md").read_text()


def test_public_names():
  assert set(distill.__all__) >= {
    "COMBINERS",
    "augment",
    "combine",
    "kd_loss",
    "kd_grad_fn",
    "lm_grad_fn",
    "modify_teacher_probs",
  }
  assert set(crr.__all__) >= {"build_corpus", "build_tokenizer", "run"}
  for mod in (distill, crr):
    for name in mod.__all__:
      assert hasattr(mod, name), name
