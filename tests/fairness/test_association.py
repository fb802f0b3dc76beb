"""Tests of trustml.fairness.association: WEAT closed forms, permutation p-values, CEAT pooling."""

import itertools
import math

import jax
import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects

from trustml.core.validation import ConfigError
from trustml.fairness import association


def _planted(thetas, phis, dim=6, seed=0):
  """A = {e1}, B = {e2}, X_i = cos θ_i e1 + sin θ_i e3, Y_j = cos φ_j e2 + sin φ_j e3.

  Then s(x_i) = cos θ_i and s(y_j) = -cos φ_j exactly; a random rotation and random positive
  scalings must not change anything (cosines are invariant).
  """
  e = np.eye(dim)
  x = np.stack([math.cos(t) * e[0] + math.sin(t) * e[2] for t in thetas])
  y = np.stack([math.cos(p) * e[1] + math.sin(p) * e[2] for p in phis])
  a, b = e[:1], e[1:2]
  rng = np.random.default_rng(seed)
  rot, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  scale = lambda m: m * rng.uniform(0.5, 3.0, size=(len(m), 1))  # noqa: E731
  return scale(x @ rot), scale(y @ rot), scale(a @ rot), scale(b @ rot)


def test_weat_effect_size_closed_form():
  thetas = [0.1, 0.4, 0.7, 1.0]
  phis = [0.2, 0.9, 1.2, 1.4]
  x, y, a, b = _planted(thetas, phis)
  s = np.array([math.cos(t) for t in thetas] + [-math.cos(p) for p in phis])
  expected = (s[:4].mean() - s[4:].mean()) / s.std(ddof=1)
  result = association.weat(x, y, a, b)
  assert result.effect_size == pytest.approx(expected, rel=1e-10)
  assert result.statistic == pytest.approx(s[:4].sum() - s[4:].sum(), rel=1e-10)
  # With a clean planted association every other partition has a smaller statistic; the
  # observed partition itself counts (scipy / sent-bias convention), so p = 1/70, never 0.
  assert result.exact and result.num_partitions == math.comb(8, 4)
  assert result.p_value == pytest.approx(1 / 70)


def test_weat_no_association_is_zero():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 16))
  a, b = rng.normal(size=(5, 16)), rng.normal(size=(7, 16))
  assert association.weat(x, x[::-1], a, b).effect_size == pytest.approx(0.0, abs=1e-12)
  # Statistical check: X, Y, A, B i.i.d. Gaussian. Each d has sd ~ sqrt(2/n) ~ 0.26 for n=30;
  # the mean over 50 draws has sd ~ 0.04, so |mean| < 0.2 fails with probability < 1e-6.
  ds = []
  for _ in range(50):
    x, y = rng.normal(size=(30, 32)), rng.normal(size=(30, 32))
    a, b = rng.normal(size=(20, 32)), rng.normal(size=(20, 32))
    ds.append(association.effect_size_and_variance(x, y, a, b)[0])
  assert abs(np.mean(ds)) < 0.2


def test_permutation_p_value_exact_by_enumeration():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
  a, b = rng.normal(size=(4, 5)), rng.normal(size=(2, 5))
  result = association.weat(x, y, a, b)

  def cos(u, v):
    return u @ v / np.linalg.norm(u) / np.linalg.norm(v)

  def s(w):
    return np.mean([cos(w, ai) for ai in a]) - np.mean([cos(w, bi) for bi in b])

  pool = np.concatenate([x, y])
  stat = lambda xi: sum(s(pool[i]) for i in xi) - sum(s(pool[j]) for j in range(6) if j not in xi)  # noqa: E731
  observed = stat((0, 1, 2))
  parts = list(itertools.combinations(range(6), 3))
  expected = sum(stat(p) >= observed - 1e-12 for p in parts) / len(parts)
  assert len(parts) == 20 and result.exact
  assert result.p_value == pytest.approx(expected)
  assert 0 < result.p_value < 1  # a random case, not a degenerate one


def _sentbias_p(s_all, n):
  """May et al.'s sent-bias exact rule: ties and the observed partition count."""
  obs = s_all[:n].sum()
  sums = [s_all[list(c)].sum() for c in itertools.combinations(range(2 * n), n)]
  return sum(si >= obs for si in sums) / len(sums)


def test_audit_b2_p_value_never_zero_and_equals_scipy_and_sentbias():
  """Audit B2 (ff_repro_weat_p0): 4 vs 4 words, X clearly closer to A: p = 1/70, not 0."""
  x, y = np.eye(8)[:4] + np.eye(8)[4], np.eye(8)[:4] - np.eye(8)[4]
  a, b = np.eye(8)[4:5] + 0.1, -np.eye(8)[4:5] + 0.1
  r = association.weat(x, y, a, b)
  sx, sy = association.association(x, a, b), association.association(y, a, b)
  ref = stats.permutation_test(
    (sx, sy),
    lambda u, v: u.sum() - v.sum(),
    permutation_type="independent",
    alternative="greater",
    n_resamples=np.inf,
  ).pvalue
  assert r.p_value == pytest.approx(1 / 70) and r.p_value == pytest.approx(ref)
  assert r.p_value == pytest.approx(_sentbias_p(np.r_[sx, sy], 4))


def test_tied_sets_count_ties():
  """Duplicated word vectors: every partition with the 3 X words in X ties -> sent-bias 1/20."""
  x, y = np.repeat(np.eye(4)[:1], 3, 0), np.repeat(np.eye(4)[1:2], 3, 0)
  a, b = np.eye(4)[:1], np.eye(4)[1:2]
  r = association.weat(x, y, a, b)
  s_all = np.r_[association.association(x, a, b), association.association(y, a, b)]
  assert r.p_value == pytest.approx(_sentbias_p(s_all, 3)) == pytest.approx(1 / 20)


def test_sampled_p_value_is_b_plus_one_over_m_plus_one():
  """Sampling: the observed partition is added, p = (b + 1) / (m + 1) > 0 even if b = 0."""
  s = np.r_[np.full(10, 5.0) + np.arange(10) * 1e-3, np.zeros(10)]  # X far above Y
  p, exact, m = association.permutation_p_value(s, 10, max_exact_partitions=10, num_samples=999)
  assert not exact and m == 999
  assert p == pytest.approx(1 / 1000)


def test_sampled_p_value_matches_exact():
  rng = np.random.default_rng(3)
  s = rng.normal(size=16)
  s[:8] += 0.4
  exact, is_exact, _ = association.permutation_p_value(s, 8)
  sampled, is_exact2, n = association.permutation_p_value(
    s, 8, max_exact_partitions=10, num_samples=20_000, seed=0
  )
  assert is_exact and not is_exact2 and n == 20_000
  # 5 binomial standard errors: false-failure probability < 1e-6 (fixed seed anyway).
  assert abs(sampled - exact) < 5 * math.sqrt(exact * (1 - exact) / n) + 1e-9


def test_unequal_and_empty_sets_rejected():
  rng = np.random.default_rng(4)
  with pytest.raises(ConfigError, match="X has 3 items and Y has 4"):
    association.weat(rng.normal(size=(3, 4)), rng.normal(size=(4, 4)), np.eye(4), np.eye(4))
  with pytest.raises(ConfigError, match="empty"):
    association.weat(np.eye(4)[:2], np.eye(4)[2:], np.zeros((0, 4)), np.eye(4))


def test_nan_embeddings_rejected_naming_the_set():
  """One NaN vector used to give p = 0 silently."""
  rng = np.random.default_rng(4)
  x, y, a, b = (rng.normal(size=(4, 5)) for _ in range(4))
  y[2, 3] = np.nan
  with pytest.raises(ConfigError, match=r"WEAT set Y embeddings is invalid: must be finite"):
    association.weat(x, y, a, b)
  b[0, 0] = np.inf
  with pytest.raises(ConfigError, match="WEAT set B embeddings"):
    association.effect_size_and_variance(x, x, a, b)
  with pytest.raises(ConfigError, match="s_values is invalid"):
    association.permutation_p_value(np.array([1.0, np.nan, 0.0, 0.0]), 2)
  with pytest.raises(ConfigError, match="effect_sizes is invalid"):
    association.random_effects([0.1, np.nan], [0.1, 0.1])


def test_random_effects_equals_statsmodels_and_truncates_tau2():
  gen = np.random.default_rng(0)
  es, v = gen.normal(0.5, 0.3, size=50), gen.uniform(0.01, 0.05, size=50)
  r = association.random_effects(es, v)
  sm = combine_effects(es, v, method_re="dl")
  assert r.effect_size == pytest.approx(sm.mean_effect_re, rel=1e-12)
  assert r.standard_error == pytest.approx(sm.sd_eff_w_re, rel=1e-12)
  assert r.tau2 == pytest.approx(sm.tau2) and r.q == pytest.approx(sm.q)


def test_random_effects_hand_computation():
  es = np.array([0.5, 1.0, 1.5])
  v = np.array([0.1, 0.2, 0.4])
  # By hand: w = (10, 5, 2.5); Σw = 17.5; ES_F = (5 + 5 + 3.75) / 17.5 = 13.75 / 17.5.
  fixed = 13.75 / 17.5
  q = 10 * (0.5 - fixed) ** 2 + 5 * (1.0 - fixed) ** 2 + 2.5 * (1.5 - fixed) ** 2
  c = 17.5 - (100 + 25 + 6.25) / 17.5
  tau2 = max(0.0, (q - 2) / c)
  w_star = 1 / (v + tau2)
  ces = (w_star * es).sum() / w_star.sum()
  se = math.sqrt(1 / w_star.sum())
  r = association.random_effects(es, v)
  assert r.fixed_effect == pytest.approx(fixed)
  assert r.q == pytest.approx(q) and r.tau2 == pytest.approx(tau2) and tau2 > 0
  assert r.effect_size == pytest.approx(ces) and r.standard_error == pytest.approx(se)
  z = ces / se
  assert r.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
  two = association.random_effects(es, v, alternative="two-sided")
  assert two.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))


def test_random_effects_reduces_to_fixed_when_tau2_zero():
  es = np.array([0.30, 0.32, 0.29, 0.31])
  v = np.array([0.5, 0.4, 0.6, 0.3])  # Q << df: tau² = 0
  r = association.random_effects(es, v)
  w = 1 / v
  assert r.tau2 == 0.0
  assert r.effect_size == pytest.approx((w * es).sum() / w.sum())
  assert r.standard_error == pytest.approx(math.sqrt(1 / w.sum()))
  with pytest.raises(ConfigError):
    association.random_effects(es, -v)
  with pytest.raises(ConfigError, match="alternative"):
    association.random_effects(es, v, alternative="less-ish")


def test_ceat_single_context_equals_weat_with_zero_tau2():
  x, y, a, b = _planted([0.1, 0.5, 0.8], [0.3, 0.6, 1.1])
  contexts = {k: [row[None] for row in m] for k, m in zip("XYAB", (x, y, a, b), strict=True)}
  r = association.ceat(contexts, num_samples=5, seed=0)
  w = association.weat(x, y, a, b)
  np.testing.assert_allclose(r.effect_sizes, w.effect_size)
  assert r.tau2 == 0.0 and r.effect_size == pytest.approx(w.effect_size)
  contexts["Y"] = contexts["Y"][:2]
  with pytest.raises(ConfigError, match="equal"):
    association.ceat(contexts, num_samples=5, seed=0)


def test_ceat_sampling_with_many_contexts():
  rng = np.random.default_rng(5)
  d = 8
  direction = np.eye(d)[0]
  mk = lambda sign, n: [sign * direction + 0.3 * rng.normal(size=(n, d)) for _ in range(4)]  # noqa: E731
  contexts = {"X": mk(1, 5), "Y": mk(-1, 5), "A": mk(1, 3), "B": mk(-1, 3)}
  r = association.ceat(contexts, num_samples=40, seed=1)
  assert r.effect_sizes.shape == (40,) and r.effect_size > 1.0 and r.p_value < 1e-3
  r2 = association.ceat(contexts, num_samples=40, seed=1)
  assert r2.effect_size == r.effect_size  # deterministic in the seed


def test_seat_with_a_model_equals_weat_on_mean_pooled_embeddings():
  from tests.fairness import linear_models
  from trustml.data import tokenizers

  test = {
    "X": ["this is he .", "he is here .", "that is him ."],
    "Y": ["this is she .", "she is here .", "that is her ."],
    "A": ["a career .", "an office job ."],
    "B": ["a family .", "a home life .", "the kids ."],
  }
  tok = tokenizers.WordTokenizer.build([s for v in test.values() for s in v], vocab_size=100)
  model = linear_models.linear_model(2)
  params = linear_models.linear_params(0, tok.vocab_size, 6, 2)
  table = np.asarray(params["embed"]["embedding"], np.float64)

  def mean_pool(sentences):
    return np.stack([table[tok.encode(s)].mean(0) for s in sentences])

  r = association.seat(model, params, tok, test, max_len=8, batch_size=2)
  ref = association.weat(*(mean_pool(test[k]) for k in "XYAB"))
  assert r.effect_size == pytest.approx(ref.effect_size, rel=1e-5)
  assert r.p_value == pytest.approx(ref.p_value)
  bad = dict(test, Y=test["Y"][:2])
  with pytest.raises(ConfigError, match="equal"):
    association.seat(model, params, tok, bad)


def test_unknown_seat_test_rejected(shared_data_dir):
  with pytest.raises(ConfigError, match="seat test 'weat99' is unknown"):
    association.load_seat_test("weat99", shared_data_dir)
  test = association.load_seat_test("sent-weat6b", shared_data_dir)
  assert len(test["X"]) == len(test["Y"]) == 80


def test_word_contexts_fallback_and_cap():
  from trustml.data import tokenizers

  corpus = ["he went home", "she went out", "he and she", "he is here", "nothing"]
  tok = tokenizers.WordTokenizer.build(corpus, vocab_size=50)
  ctx = association.word_contexts(["He", "she", "zebra"], corpus, tok, max_contexts=2, seed=0)
  assert len(ctx[0]) == 2 and all("he" in c.split() for c in ctx[0])
  assert ctx[1] == ["she went out", "he and she"]
  assert ctx[2] == ["this is zebra ."]


def test_token_level_ceat_reads_the_words_own_vectors():
  """Bag of embeddings: a word's token state is its static embedding in every context, so
  token-level CEAT is WEAT on the embedding rows (every sample equal, τ² = 0); the pooled
  variant reads the whole sentence and differs."""
  from trustml.data import tokenizers
  from trustml.models import registry

  words = {"X": ["he", "man", "boy"], "Y": ["she", "woman", "girl"], "A": ["work", "office"],
           "B": ["home", "kids"]}  # fmt: skip
  corpus = [
    "he went to work", "the man at the office", "a boy at home", "she went home",
    "the woman and the kids", "a girl at work", "he and she at the office", "kids at home",
    "man and woman", "boy meets girl at work",
  ]  # fmt: skip
  tok = tokenizers.WordTokenizer.build(corpus, vocab_size=100)
  cfg = registry.default_model_config("bag")
  cfg.embed_dim, cfg.hidden_dim = 8, 8
  model = registry.build_model(cfg, vocab_size=tok.vocab_size, num_classes=2, max_len=8)
  batch = {"tokens": np.ones((2, 8), np.int32), "mask": np.ones((2, 8), bool)}
  params = model.init(jax.random.key(0), batch)
  table = np.asarray(model.embedding_table(params), np.float64)
  kw = dict(num_samples=6, max_contexts=3, seed=0, max_len=8, batch_size=4)
  r = association.ceat_from_corpus(model, params, tok, words, corpus, **kw)
  rows = {k: table[[tok.token_to_id(w) for w in v]] for k, v in words.items()}
  ref = association.weat(*(rows[k] for k in "XYAB"))
  np.testing.assert_allclose(r.effect_sizes, ref.effect_size, rtol=1e-5)
  assert r.tau2 == 0.0
  pooled = association.ceat_from_corpus(
    model, params, tok, words, corpus, representation="pooled", **kw
  )
  assert not np.allclose(pooled.effect_sizes, ref.effect_size, rtol=1e-3)
  assert association.word_position("Man", "the man at the office", tok, 8) == 1
  with pytest.raises(ConfigError, match="ceat_representation"):
    association.ceat_from_corpus(model, params, tok, words, corpus, representation="cls", **kw)
