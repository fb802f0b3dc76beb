"""Tokenizer round trips and persistence; fixed-shape, deterministic batching."""

import numpy as np
import pytest

from trustml.core.validation import ConfigError
from trustml.data import batching, tokenizers


def test_word_round_trip_and_specials(tmp_path):
  texts = ["Set an alarm for 7 am.", "Play a song by Adele", "set the alarm"]
  tok = tokenizers.WordTokenizer.build(texts, vocab_size=100)
  assert [tok.id_to_token(i) for i in range(4)] == list(tokenizers.SPECIALS)
  assert tok.decode(tok.encode("set an alarm for 7 am .")) == "set an alarm for 7 am ."
  assert tok.encode("zebra") == [tokenizers.UNK]
  ids = tok.encode("set alarm", add_bos=True, add_eos=True)
  assert ids[0] == tokenizers.BOS and ids[-1] == tokenizers.EOS
  tok.save(tmp_path / "t.json")
  assert tokenizers.load(tmp_path / "t.json") == tok


def test_vocab_cap_min_count_and_determinism():
  texts = ["a a a b b c", "d"]
  tok = tokenizers.WordTokenizer.build(texts, vocab_size=6)
  assert tok.vocab_size == 6  # 4 specials + the 2 most frequent words.
  assert tok.token_to_id("a") == 4 and tok.token_to_id("b") == 5
  assert tok.token_to_id("c") == tokenizers.UNK
  tok2 = tokenizers.WordTokenizer.build(texts, min_count=2)
  assert tok2.vocab_size == 6
  assert tokenizers.WordTokenizer.build(texts[::-1], vocab_size=6) == tok
  with pytest.raises(ConfigError, match="vocab_size"):
    tokenizers.WordTokenizer.build(texts, vocab_size=3)


def test_char_round_trip(tmp_path):
  text = "First Citizen:\nSpeak, speak."
  tok = tokenizers.CharTokenizer.build([text])
  assert tok.decode(tok.encode(text)) == text
  tok.save(tmp_path / "c.json")
  assert tokenizers.load(tmp_path / "c.json") == tok


def test_encode_batch_pads_and_truncates():
  tok = tokenizers.WordTokenizer.build(["a b c d e"])
  tokens, mask = tok.encode_batch(["a b", "a b c d e"], max_len=4)
  assert tokens.shape == (2, 4) and tokens.dtype == np.int32
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 1, 1]])
  assert (tokens[~mask] == tokenizers.PAD).all()


def _arrays(n=10):
  tok = tokenizers.WordTokenizer.build([f"w{i}" for i in range(n)])
  cols = {"text": np.array([f"w{i}" for i in range(n)], object), "label": np.arange(n) % 3}
  return batching.encode_split(cols, tok, 4)


def test_take_padded_marks_padding():
  arr = _arrays()
  b = batching.take_padded(arr, np.array([1, 2, 3]), 5)
  assert b["tokens"].shape == (5, 4)
  np.testing.assert_array_equal(b["weight"], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(b["index"], [1, 2, 3, -1, -1])
  assert not b["mask"][3:].any()


def test_shuffled_batches_cover_each_epoch_and_are_deterministic():
  arr = _arrays(10)
  seen = np.concatenate([batching.shuffled_batch(arr, 5, 0, s)["index"] for s in range(2)])
  assert sorted(seen.tolist()) == list(range(10))
  a = batching.shuffled_batch(arr, 4, 3, 7)["index"]
  b = batching.shuffled_batch(arr, 4, 3, 7)["index"]
  np.testing.assert_array_equal(a, b)
  straddle = batching.shuffled_batch(arr, 4, 0, 2)["index"]  # Rows 8..11 straddle epochs.
  assert len(straddle) == 4 and (straddle >= 0).all()


def test_poisson_batch_rate_and_truncation():
  arr = _arrays(10)
  rng_counts = [batching.poisson_batch(arr, 0.3, 10, 0, s)[1] for s in range(2000)]
  # Binomial(10, 0.3): mean 3, sd of the mean over 2000 draws = sqrt(2.1/2000) ~ 0.032.
  assert abs(np.mean(rng_counts) - 3.0) < 0.15
  b, sampled, truncated = batching.poisson_batch(arr, 1.0, 6, 0, 0)
  assert sampled == 10 and truncated == 4
  assert b["weight"].sum() == 6
  with pytest.raises(ConfigError, match="sampling_rate"):
    batching.poisson_batch(arr, 0.0, 6, 0, 0)


def test_eval_batches_cover_all_rows_once():
  arr = _arrays(10)
  idx = np.concatenate([b["index"][b["weight"] > 0] for b in batching.eval_batches(arr, 4)])
  np.testing.assert_array_equal(idx, np.arange(10))
