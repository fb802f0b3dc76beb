"""Tests of the embedded default corpus: determinism and its documented statistics.

Statistical checks use fixed seeds; each states the test and its false-failure rate for a
random seed (here the seed is fixed, so the outcome is deterministic).
"""

import numpy as np
import pytest
from scipy import optimize, stats

from trustml.core.validation import ConfigError
from trustml.data import synthetic


@pytest.fixture(scope="module")
def corpus():
  return synthetic.generate(synthetic.SyntheticConfig(seed=0))


def _all_rows(ds):
  tr, te = ds.splits["train"], ds.splits["test"]
  return {k: np.concatenate([tr[k], te[k]]) for k in tr}


def test_same_seed_identical_different_seed_differs(corpus):
  again = synthetic.generate(synthetic.SyntheticConfig(seed=0))
  other = synthetic.generate(synthetic.SyntheticConfig(seed=1))
  for split in ("train", "test", "lm", "lm_test"):
    for col, values in corpus.splits[split].items():
      assert list(values) == list(again.splits[split][col]), (split, col)
  assert list(corpus.splits["train"]["text"]) != list(other.splits["train"]["text"])
  assert list(corpus.splits["lm"]["text"]) != list(other.splits["lm"]["text"])


def test_schema(corpus):
  assert corpus.label_names == synthetic.INTENTS
  assert len(corpus.label_names) >= 10
  for split in ("train", "test"):
    cols = corpus.splits[split]
    n = len(cols["text"])
    assert {"text", "label", "user_id", "gender", "slots", "mention_gender"} <= set(cols)
    assert all(len(v) == n for v in cols.values())
    assert cols["label"].dtype == np.int32 and cols["user_id"].dtype == np.int32
    assert cols["label"].min() >= 0 and cols["label"].max() < len(synthetic.INTENTS)
  # Every slot value appears verbatim in its utterance.
  tr = corpus.splits["train"]
  for text, slots in zip(tr["text"][:500], tr["slots"][:500], strict=True):
    for _, value in slots:
      assert value in text
  assert all(len(t) >= 5 for t in synthetic.TEMPLATES.values())


def test_users_and_per_user_split(corpus):
  cfg = synthetic.SyntheticConfig()
  tr, te = corpus.splits["train"], corpus.splits["test"]
  n_train = np.bincount(tr["user_id"], minlength=cfg.num_users)
  n_test = np.bincount(te["user_id"], minlength=cfg.num_users)
  counts = n_train + n_test
  assert cfg.num_users >= 500 and (counts >= 2).all()
  np.testing.assert_array_equal(n_test, np.maximum(1, np.round(0.2 * counts)))
  # A user's gender is constant across its rows.
  rows = _all_rows(corpus)
  g = np.full(cfg.num_users, -1)
  g[rows["user_id"]] = rows["gender"]
  for u, gender in zip(rows["user_id"], rows["gender"], strict=True):
    assert g[u] == gender


def test_activity_is_heavy_tailed_power_law(corpus):
  cfg = synthetic.SyntheticConfig()
  counts = np.bincount(_all_rows(corpus)["user_id"], minlength=cfg.num_users)
  srt = np.sort(counts)[::-1]
  top_share = srt[: cfg.num_users // 10].sum() / srt.sum()
  # Continuous Pareto(1.2): top-10% share 0.1**(1 - 1/1.2) = 0.68; flooring lowers it a bit.
  assert top_share > 0.4
  # P(max/median < 20) ~ (1 - 30**-1.2)**1000 < 1e-7 (median = 3).
  assert srt[0] / np.median(counts) >= 20
  # Discrete MLE of the tail exponent: P(N = k) = (k/m)^-a - ((k+1)/m)^-a, censored at the cap.
  m, cap = cfg.min_utterances_per_user, cfg.max_utterances_per_user

  def nll(a):
    k = counts.astype(float)
    p = np.where(k >= cap, (k / m) ** -a, (k / m) ** -a - ((k + 1) / m) ** -a)
    return -np.log(p).sum()

  a_hat = optimize.minimize_scalar(nll, bounds=(0.2, 5.0), method="bounded").x
  h = 1e-3
  fisher = (nll(a_hat + h) - 2 * nll(a_hat) + nll(a_hat - h)) / h**2
  se = 1 / np.sqrt(fisher)
  # 4 standard errors: false-failure rate ~6e-5 (asymptotic normality of the MLE).
  assert abs(a_hat - cfg.activity_exponent) < 4 * se, (a_hat, se)


def test_intent_mix_is_dirichlet_per_user(corpus):
  cfg = synthetic.SyntheticConfig()
  rows = _all_rows(corpus)
  k = len(synthetic.INTENTS)
  table = np.zeros((cfg.num_users, k))
  np.add.at(table, (rows["user_id"], rows["label"]), 1)
  n = table.sum(1)
  # Unbiased per-user estimate of sum_k theta_k^2; E = (c + 1) / (K c + 1) under Dirichlet(c).
  simpson = (table * (table - 1)).sum(1) / (n * (n - 1))
  expected = (cfg.intent_concentration + 1) / (k * cfg.intent_concentration + 1)
  sem = simpson.std(ddof=1) / np.sqrt(len(simpson))
  assert abs(simpson.mean() - expected) < 4 * sem, (simpson.mean(), expected, sem)
  assert simpson.mean() > 2 / k  # far from the IID value 1/K
  # Homogeneity across heavy users is rejected.
  heavy = table[n >= 30]
  chi2 = stats.chi2_contingency(heavy[:, heavy.sum(0) > 0])
  assert chi2.pvalue < 1e-10


def test_gender_balance(corpus):
  cfg = synthetic.SyntheticConfig()
  rows = _all_rows(corpus)
  user_gender = np.zeros(cfg.num_users)
  user_gender[rows["user_id"]] = rows["gender"]
  assert 0.45 <= user_gender.mean() <= 0.55
  assert user_gender.sum() == cfg.num_users // 2


def test_gendered_words_present_and_swappable(corpus):
  cfg = synthetic.SyntheticConfig()
  rows = _all_rows(corpus)
  words = synthetic.gendered_words(rows["text"])
  has_mention = np.array([synthetic.template_has_mention(t) for t in rows["template"]])
  # Gendered words appear only through mentions, and agree with the recorded mention gender.
  assert (words[~has_mention] == -1).all()
  np.testing.assert_array_equal(words[has_mention], rows["mention_gender"][has_mention])
  assert (words != 2).all()
  n = int(has_mention.sum())
  n_gendered = int((words >= 0).sum())
  # Binomial tests at alpha 1e-4 each (false-failure rate 1e-4 per check).
  assert stats.binomtest(n_gendered, n, 1 - cfg.neutral_mention_rate).pvalue > 1e-4
  assert stats.binomtest(int((words == 1).sum()), n_gendered, 0.5).pvalue > 1e-4
  assert n_gendered / len(words) >= 0.15  # documented: >= 15% of utterances are gendered
  # Each emitted gendered word is in the swap lists, both directions.
  vocab = {w for t in rows["text"] for w in t.replace("'s", "").split()}
  male = {m for m, _ in synthetic.GENDER_PAIRS}
  female = {f for _, f in synthetic.GENDER_PAIRS}
  assert male <= vocab and female <= vocab


def test_lm_bias_rates_match_config():
  for bias in (0.8, 0.9):
    ds = synthetic.generate(
      synthetic.SyntheticConfig(num_users=10, num_lm_sentences=6000, lm_bias=bias)
    )
    lm = ds.splits["lm"]
    for prof in synthetic.PROFESSIONS:
      sel = lm["profession"] == prof
      she = int(lm["gender"][sel].sum())
      p = synthetic.she_probability(prof, bias)
      # 17 binomial tests at alpha 1e-4: family false-failure rate < 2e-3.
      assert stats.binomtest(she, int(sel.sum()), p).pvalue > 1e-4, (prof, she, sel.sum(), p)
    # The pronoun in the text agrees with the gender column.
    for text, g in zip(lm["text"][:300], lm["gender"][:300], strict=True):
      toks = set(text.split())
      assert bool(toks & {"she", "her"}) == bool(g) and bool(toks & {"he", "his"}) == (not g)
  assert set(synthetic.FEMALE_STEREOTYPED).isdisjoint(synthetic.MALE_STEREOTYPED)


@pytest.mark.parametrize(
  "field,value",
  [
    ("num_users", 0),
    ("activity_exponent", -1.0),
    ("min_utterances_per_user", 1),
    ("max_utterances_per_user", 1),
    ("intent_concentration", 0.0),
    ("test_fraction", 1.0),
    ("num_lm_sentences", 0),
    ("lm_bias", 1.5),
  ],
)
def test_invalid_config(field, value):
  with pytest.raises(ConfigError, match=f"data.{field}"):
    synthetic.generate(synthetic.SyntheticConfig(**{field: value}))


def test_corpus_statistics_agree_with_columns(corpus):
  st = synthetic.corpus_statistics(corpus)
  assert st["num_train"] == len(corpus.splits["train"]["text"])
  assert st["num_utterances"] == st["num_train"] + st["num_test"]
  assert st["female_user_fraction"] == 0.5
  assert (
    abs(st["male_word_fraction"] + st["female_word_fraction"] - st["gendered_fraction"]) < 1e-12
  )
  assert st["lm_she_rate/female_stereotyped"] > 0.75 > 0.25 > st["lm_she_rate/male_stereotyped"]
