"""Tests of trustml.fairness.counterfactual: involution, case handling, token swaps, gap."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from trustml.core.validation import ConfigError
from trustml.fairness import counterfactual

SMALL = {
  "he": "she", "she": "he", "his": "her", "her": "his", "man": "woman", "woman": "man",
  "actor": "actress", "actress": "actor", "mr": "mrs", "mrs": "mr",
}  # fmt: skip


@pytest.fixture(scope="module")
def pairs():
  return counterfactual.load_gender_pairs()


def test_loaded_pairs_are_an_involution(pairs, shared_data_dir):
  del shared_data_dir  # The full WinoBias lists (> 150 pairs) need the data folder.
  counterfactual.check_pairs(pairs)
  assert pairs["he"] == "she" and pairs["she"] == "he"
  assert pairs["her"] == "his" and "him" not in pairs  # the documented default choice
  assert pairs["actress"] == "actor"
  assert len(pairs) > 150


def test_her_counterpart_him():
  pairs = counterfactual.load_gender_pairs(her_counterpart="him")
  assert pairs["her"] == "him" and pairs["him"] == "her" and "his" not in pairs


def test_third_party_fallback(tmp_path):
  pairs = counterfactual.load_gender_pairs(data_dir=tmp_path)  # no winobias folder there
  counterfactual.check_pairs(pairs)
  assert pairs["king"] == "queen" and pairs["her"] == "his" and "him" not in pairs
  him = counterfactual.load_gender_pairs(data_dir=tmp_path, her_counterpart="him")
  assert him["her"] == "him" and "his" not in him
  assert counterfactual.THIRD_PARTY_FILE.is_file()
  assert (pathlib.Path(counterfactual.THIRD_PARTY_FILE).parent / "NOTICE").is_file()


def test_swap_case_preserved():
  text = "He said HIS wife, Mr. Smith's actress, met the MAN; he's a Man."
  out = counterfactual.swap_text(text, SMALL)
  assert out == "She said HER wife, Mrs. Smith's actor, met the WOMAN; she's a Woman."


def test_swap_leaves_non_words_and_mixed_case():
  assert counterfactual.swap_text("hE the2 heshe he2", SMALL) == "hE the2 heshe she2"
  assert counterfactual.swap_text("", SMALL) == ""


@pytest.mark.parametrize(
  "text",
  [
    "He told HER that his Actress was a MAN.",
    "Mrs. and Mr. X; her/his; she-he; HeShe; WOMAN's",
    "Ünïcode hé he\u0301 — she said: 'HIS'!",
    "the King and Queen; Nephew, nieces; GRANDFATHER",
  ],
)
def test_swap_is_an_involution(pairs, text):
  once = counterfactual.swap_text(text, pairs)
  assert counterfactual.swap_text(once, pairs) == text


def test_swap_involution_random_strings(pairs):
  rng = np.random.default_rng(0)
  words = list(pairs) + ["the", "a", "X", "of"]
  for _ in range(200):
    toks = rng.choice(words, size=8)
    toks = [
      t.upper() if r < 0.2 else t.title() if r < 0.5 else t
      for t, r in zip(toks, rng.random(8), strict=True)
    ]
    seps = rng.choice([" ", ", ", "'", "-", ".", "3"], size=8)
    text = "".join(t + s for t, s in zip(toks, seps, strict=True))
    assert counterfactual.swap_texts([counterfactual.swap_text(text, pairs)], pairs)[0] == text


def test_pronoun_rule_swaps_object_pronouns(pairs):
  """The matching leaves 'him' unswapped; the next-token rule covers object pronouns."""
  swap = lambda t: counterfactual.swap_text(t, pairs, pronoun_rule=True)  # noqa: E731
  assert counterfactual.swap_text("She told him.", pairs) == "He told him."  # the matching
  assert swap("She told him.") == "He told her."
  assert swap("He told her.") == "She told him."
  assert swap("He gave her the book") == "She gave him the book"
  assert swap("She took her book to him") == "He took his book to her"
  assert swap("HIS dog; it is his.") == "HER dog; it is hers."
  assert swap("Her, not his!") == "Him, not hers!"
  for text in ("She told him.", "He gave her the book", "She took her book to him", "his."):
    assert swap(swap(text)) == text
  # The documented misreading: object pronoun before a bare noun.
  assert swap(swap("gave him flowers")) == "gave his flowers"


def test_token_level_pronoun_rule_matches_the_text_rule(pairs):
  from trustml.data import tokenizers  # noqa: PLC0415

  texts = ["she told him .", "he gave her the book", "she took her book to him", "it is his ."]
  tok = tokenizers.WordTokenizer.build(texts + ["he she his her hers him"], vocab_size=60)
  itos = [tok.id_to_token(i) for i in range(tok.vocab_size)]
  p = counterfactual.pronoun_ids(itos, tokenizers.UNK)
  ids = counterfactual.token_id_pairs(pairs, tok.token_to_id, tokenizers.UNK)
  tokens, _ = tok.encode_batch(texts, 8)
  got = np.asarray(counterfactual.swap_token_ids(tokens, ids, pronouns=p))
  want, _ = tok.encode_batch(
    [counterfactual.swap_text(t, pairs, pronoun_rule=True) for t in texts], 8
  )
  np.testing.assert_array_equal(got, want)
  plain = np.asarray(counterfactual.swap_token_ids(tokens, ids))
  assert (plain == tok.token_to_id("him")).any()  # the matching alone leaves 'him'


def test_gap_rejects_nan_scores():
  with pytest.raises(ConfigError, match="cf_scores is invalid: must be finite"):
    counterfactual.counterfactual_gap(np.array([0.1, 0.2]), np.array([0.1, np.nan]))


def test_non_involutive_pairs_rejected():
  with pytest.raises(ConfigError, match="involution"):
    counterfactual.swap_text("he", {"he": "she", "she": "it"})
  with pytest.raises(ConfigError, match="lower-case"):
    counterfactual.swap_text("he", {"He": "She", "She": "He"})
  with pytest.raises(ConfigError, match="her_counterpart"):
    counterfactual.load_gender_pairs(her_counterpart="hers")
  assert counterfactual.load_gender_pairs(her_counterpart="pos")["her"] == "his"


def test_build_matching_prefers_support_then_order():
  raw = [("lady", "lord"), ("lady", "gentleman"), ("gentleman", "lady"), ("lord", "x")]
  m = counterfactual.build_matching(raw)
  assert m == {"lady": "gentleman", "gentleman": "lady", "lord": "x", "x": "lord"}


def test_swap_token_ids_involution_and_values():
  tokens = jnp.array([[0, 5, 7, 9, 12, 40], [9, 9, 5, 1, 2, 3]])
  out = counterfactual.swap_token_ids(tokens, [[5, 9], [7, 12]])
  np.testing.assert_array_equal(out, [[0, 9, 12, 5, 7, 40], [5, 5, 9, 1, 2, 3]])
  np.testing.assert_array_equal(counterfactual.swap_token_ids(out, {5: 9, 12: 7}), tokens)
  with pytest.raises(ConfigError, match="matching"):
    counterfactual.swap_token_ids(tokens, [[5, 9], [9, 7]])


def test_token_id_pairs_drops_unknown():
  vocab = {"he": 4, "she": 5, "actor": 6}
  ids = counterfactual.token_id_pairs(SMALL, lambda w: vocab.get(w, 1), unk_id=1)
  np.testing.assert_array_equal(ids, [[4, 5]])


def test_counterfactual_gap():
  np.testing.assert_allclose(counterfactual.counterfactual_gap([0.2, 0.9], [0.5, 0.4]), [0.3, 0.5])
  p = np.array([[0.7, 0.3], [0.1, 0.9]])
  q = np.array([[0.4, 0.6], [0.1, 0.9]])
  np.testing.assert_allclose(counterfactual.counterfactual_gap(p, q), [0.3, 0.0])
  with pytest.raises(ConfigError):
    counterfactual.counterfactual_gap(p, q[:1])
