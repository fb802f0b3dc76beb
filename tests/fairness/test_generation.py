"""Tests of BOLD generation disparity: labelling, disparity, prompt encoding and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from trustml.core import validation
from trustml.data import tokenizers
from trustml.fairness import counterfactual, generation
from trustml.models import registry

PAIRS = {
  "he": "she",
  "she": "he",
  "his": "her",
  "her": "his",
  "actor": "actress",
  "actress": "actor",
  "king": "queen",
  "queen": "king",
}


def test_gendered_words_orientation_hand():
  male, female = generation.gendered_words(PAIRS)
  assert male == {"he", "his", "actor", "king", "him"}
  assert female == {"she", "her", "actress", "queen", "hers"}
  male, female = generation.gendered_words(PAIRS, include_unpaired=False)
  assert "him" not in male and "hers" not in female


def test_every_real_pair_has_one_female_side(shared_data_dir):
  pairs = counterfactual.load_gender_pairs(shared_data_dir)
  for a, b in pairs.items():
    assert generation.is_female_word(a) != generation.is_female_word(b), (a, b)
  male, female = generation.gendered_words(pairs)
  assert {"he", "his", "him", "man", "father", "king"} <= male
  assert {"she", "her", "woman", "mother", "queen", "actress"} <= female
  assert not male & female


def test_label_texts_hand_examples():
  male, female = generation.gendered_words(PAIRS)
  texts = [
    "he said that his work was done",  # 2 male -> male
    "she told her friend",  # 2 female -> female
    "the king and the queen",  # 1 - 1 tie -> neutral
    "the engineer left early",  # none -> neutral
    "He and SHE and she",  # case-insensitive: 1 male, 2 female -> female
    "the actor met him",  # actor + him -> male
  ]
  labels = generation.label_texts(texts, male, female)
  m, f, n = generation.MALE, generation.FEMALE, generation.NEUTRAL
  np.testing.assert_array_equal(labels, [m, f, n, n, f, m])


def test_label_token_ids_counts_only_generated_positions():
  tok = tokenizers.WordTokenizer.build(["he she his her the nurse said"], vocab_size=50)
  male, female = generation.gendered_words(PAIRS)
  table = generation.gender_id_table(tok, male, female)
  assert table[tok.token_to_id("he")] == 1 and table[tok.token_to_id("her")] == -1
  assert table[tok.token_to_id("nurse")] == 0 and table[tokenizers.UNK] == 0
  ids = np.array(
    [
      tok.encode("he said she she"),  # prompt "he" excluded -> 2 female -> female
      tok.encode("she said he the"),  # prompt "she" excluded -> male
      tok.encode("the nurse said the"),  # neutral
    ]
  )
  generated = np.zeros(ids.shape, bool)
  generated[:, 1:] = True
  labels = generation.label_token_ids(ids, generated, table)
  np.testing.assert_array_equal(labels, [generation.FEMALE, generation.MALE, generation.NEUTRAL])


def test_disparity_hand_computation():
  m, f, n = generation.MALE, generation.FEMALE, generation.NEUTRAL
  labels = np.array([m, m, m, f, n, f, f, n, n, n])
  groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
  out = generation.disparity(labels, groups, ["a", "b", "c"])
  # group a: 3 male, 1 female, 5 total -> |3-1|/4 = 0.5, fraction 2/5
  # group b: 0 male, 2 female, 3 total -> 1.0, fraction 2/3; group c: no gendered -> skipped.
  assert out["per_group"]["a"]["disparity"] == pytest.approx(0.5)
  assert out["per_group"]["b"]["disparity"] == pytest.approx(1.0)
  assert np.isnan(out["per_group"]["c"]["disparity"])
  assert out["gender_disparity"] == pytest.approx(0.75)
  assert out["gender_disparity_fraction"] == pytest.approx((2 / 5 + 2 / 3 + 0) / 3)
  assert out["num_groups_scored"] == 2
  assert out["male_fraction"] == pytest.approx(0.3)
  assert out["female_fraction"] == pytest.approx(0.3)
  with pytest.raises(validation.ConfigError):
    generation.disparity(np.array([]), np.array([]), [])


def test_encode_prompts_bos_and_last_words():
  tok = tokenizers.WordTokenizer.build(["a b c d e"], vocab_size=20)
  tokens, lengths = generation.encode_prompts(tok, ["a b c d e", "b zzz"], 4, 8)
  assert tokens.shape == (2, 8)
  np.testing.assert_array_equal(lengths, [4, 3])
  ids = [tok.token_to_id(w) for w in "cde"]
  np.testing.assert_array_equal(tokens[0, :4], [tokenizers.BOS, *ids])
  np.testing.assert_array_equal(tokens[1, :3], [tokenizers.BOS, tok.token_to_id("b"), 1])
  assert (tokens[:, 4:] == 0).all()
  with pytest.raises(validation.ConfigError):
    generation.encode_prompts(tok, ["a"], 8, 8)


def test_load_bold_prompts_counts(shared_data_dir):
  prompts, groups, names = generation.load_bold_prompts("profession", str(shared_data_dir))
  assert len(names) == 18 and len(prompts) == 10195 and groups.shape == (10195,)
  sub, sub_groups, _ = generation.load_bold_prompts(
    "profession", str(shared_data_dir), max_per_group=20, seed=3
  )
  counts = np.bincount(sub_groups, minlength=18)
  assert counts.max() == 20 and set(sub) <= set(prompts)
  _, g_groups, g_names = generation.load_bold_prompts("gender", str(shared_data_dir))
  assert g_names == ["American_actors", "American_actresses"]
  np.testing.assert_array_equal(np.bincount(g_groups), [2048, 1156])
  with pytest.raises(validation.ConfigError):
    generation.load_bold_prompts("colour", str(shared_data_dir))


@pytest.fixture(scope="module")
def tiny_lm():
  vocab, t = 24, 12
  cfg = registry.default_model_config("causal_lm")
  cfg.update(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
  model = registry.build_model(cfg, vocab_size=vocab, num_classes=vocab, max_len=t)
  batch = {"tokens": np.zeros((2, t), np.int32), "mask": np.ones((2, t), bool)}
  # Scaled-up weights put greedy choices far from ties.
  params = jax.jit(lambda k, b: jax.tree.map(lambda x: 3.0 * x, model.init(k, b)))(
    jax.random.key(0), batch
  )
  rng = np.random.default_rng(0)
  lengths = np.array([2, 3, 5, 4], np.int32)
  tokens = np.zeros((4, t), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, 0] = tokenizers.BOS
    tokens[i, 1:n] = rng.integers(4, vocab, n - 1)
  return model, params, tokens, lengths


def _greedy_reference(model, params, tokens, lengths, new):
  """Python loop: one row at a time, feeding the growing prefix (no padding tricks)."""
  out = tokens.copy()
  apply = jax.jit(model.apply)
  for b in range(tokens.shape[0]):
    n, done = int(lengths[b]), False
    for i in range(new):
      batch = {"tokens": out[b : b + 1], "mask": (np.arange(out.shape[1]) < n + i)[None]}
      logits = np.asarray(apply(params, batch))[0, n + i - 1]
      nxt = 0 if done else int(np.argmax(logits))
      out[b, n + i] = nxt
      done = done or nxt == tokenizers.EOS
  return out


def test_temperature_to_zero_equals_greedy(tiny_lm):
  model, params, tokens, lengths = tiny_lm
  ref = _greedy_reference(model, params, tokens, lengths, 6)
  greedy = generation.make_sampler(model.apply, max_new_tokens=6, temperature=0.0)
  out, gen = greedy(params, tokens, lengths, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(out), ref)
  cold = generation.make_sampler(model.apply, max_new_tokens=6, temperature=1e-4)
  out_cold, _ = cold(params, tokens, lengths, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(out_cold), ref)
  top1 = generation.make_sampler(model.apply, max_new_tokens=6, temperature=1.0, top_k=1)
  np.testing.assert_array_equal(
    np.asarray(top1(params, tokens, lengths, jax.random.key(2))[0]), ref
  )
  # generated marks exactly the written non-PAD positions after each prompt.
  pos = np.arange(tokens.shape[1])[None]
  expect = (pos >= lengths[:, None]) & (ref != 0)
  np.testing.assert_array_equal(np.asarray(gen), expect)
  # Prompts are untouched.
  np.testing.assert_array_equal(
    np.where(pos < lengths[:, None], np.asarray(out), 0),
    np.where(pos < lengths[:, None], tokens, 0),
  )


def test_generate_chunks_match_one_call(tiny_lm):
  model, params, tokens, lengths = tiny_lm
  sampler = generation.make_sampler(model.apply, max_new_tokens=4, temperature=1.0)
  key = jax.random.key(0)
  halves = [
    sampler(params, tokens[s], lengths[s], jax.random.fold_in(key, c))[0]
    for c, s in enumerate((slice(0, 2), slice(2, 4)))
  ]
  chunked, _ = generation.generate(sampler, params, tokens, lengths, key, 2)
  np.testing.assert_array_equal(chunked, np.concatenate([np.asarray(h) for h in halves]))


def test_top1_is_argmax():
  logits = jax.random.normal(jax.random.key(3), (50, 9))
  draws = jax.jit(lambda x, k: generation.sample_from_logits(x, k, 1.0, 1))(
    logits, jax.random.key(4)
  )
  np.testing.assert_array_equal(np.asarray(draws), np.argmax(np.asarray(logits), -1))


def test_sampling_frequencies_match_softmax():
  # 20k draws from fixed logits at temperature 2 with top-k 3; chi-square goodness of fit.
  # Fixed seed; under the null a false failure at alpha = 1e-3 has probability 0.001.
  logits = jnp.array([2.0, 1.0, 0.5, 0.0, -1.0])
  draws = jax.jit(lambda x, k: generation.sample_from_logits(x, k, 2.0, 3))(
    jnp.broadcast_to(logits, (20000, 5)), jax.random.key(7)
  )
  counts = np.bincount(np.asarray(draws), minlength=5)
  assert counts[3:].sum() == 0
  p = np.exp(np.array([2.0, 1.0, 0.5]) / 2.0)
  p /= p.sum()
  assert stats.chisquare(counts[:3], 20000 * p).pvalue > 1e-3


def test_sampler_rejects_bad_arguments():
  with pytest.raises(validation.ConfigError):
    generation.make_sampler(lambda p, b: b, max_new_tokens=0, temperature=1.0)
  with pytest.raises(validation.ConfigError):
    generation.make_sampler(lambda p, b: b, max_new_tokens=3, temperature=-1.0)


def test_public_names():
  assert set(generation.__all__) >= {
    "disparity",
    "gendered_words",
    "label_token_ids",
    "label_texts",
    "load_bold_prompts",
    "make_sampler",
    "sample_from_logits",
  }
  for name in generation.__all__:
    assert hasattr(generation, name), name
