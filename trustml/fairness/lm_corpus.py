"""The CRR experiment's language-model corpus: sources, a swap-closed tokenizer, LM arrays.

Pure functions of the config's ``data`` section and the texts: :func:`build_corpus` reads the
embedded profession-pronoun corpus, WinoBias and Tiny Shakespeare; :func:`build_tokenizer`
makes a word vocabulary closed under the gender swap; :func:`encode_lm` turns texts into the
``BOS`` + words + ``EOS`` arrays the causal LMs train on; :func:`as_dataset` wraps the corpus
in the spine's :class:`~trustml.data.dataset.TextDataset`.
"""

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from trustml.data import dataset, paths, sources, tokenizers

CORPUS_FIELDS = (
  "dir",
  "seed",
  "num_lm_sentences",
  "lm_bias",
  "winobias",
  "shakespeare_max_sequences",
)


_SENTENCE_RE = re.compile(r"(?<=[.!?;])\s+")


def _shakespeare_sequences(texts: Any, max_words: int, limit: int) -> list[str]:
  """Cuts speeches into sentence-packed pieces of at most ``max_words`` words (first ``limit``)."""
  out: list[str] = []
  for speech in texts:
    cur: list[str] = []
    for sent in _SENTENCE_RE.split(" ".join(str(speech).split())):
      words = sent.split()
      if cur and len(cur) + len(words) > max_words:
        out.append(" ".join(cur))
        cur = []
      cur.extend(words[:max_words])
    if cur:
      out.append(" ".join(cur))
    if len(out) >= limit:
      break
  return out[:limit]


def _winobias(data_dir: str | None, split: str) -> list[str]:
  """WinoBias pro-stereotyped sentences (both types) of ``split`` ('dev' or 'test'), unbracketed."""
  folder = paths.require_dataset_dir("winobias_gender_swaps", data_dir) / "winobias"
  out = []
  for t in (1, 2):
    for line in (folder / f"pro_stereotyped_type{t}.txt.{split}").read_text().splitlines():
      line = line.strip()
      if line:
        out.append(line.split(" ", 1)[1].replace("[", "").replace("]", ""))
  return out


def build_corpus(data: Mapping[str, Any], max_len: int) -> dict[str, dict[str, list[str]]]:
  """The teacher's (and students') LM corpus, by source, with held-out text.

  Sources (each optional):
    * ``synthetic``: the embedded corpus's ``lm`` / ``lm_test`` splits (templated sentences
      whose pronoun is female with probability ``lm_bias`` for female-stereotyped professions,
      ``1 - lm_bias`` for male-stereotyped ones, 0.5 for neutral ones).
    * ``winobias``: the 1,584 WinoBias pro-stereotyped sentences (real; each occupation takes
      its stereotypical pronoun); ``dev`` files train, ``test`` files are held out.
    * ``shakespeare``: Tiny Shakespeare speeches packed into sentence pieces of at most
      ``max_len - 2`` words (real text whose gendered words are 73% male); per-speaker
      train/test split of :mod:`trustml.data.shakespeare`; the held-out part is capped at a
      tenth of ``shakespeare_max_sequences``.

  Returns:
    ``{"train": {source: texts}, "eval": {source: texts}}``.
  """
  data_dir = data["dir"] or None
  train: dict[str, list[str]] = {}
  held: dict[str, list[str]] = {}
  if data["num_lm_sentences"]:
    ds = sources.load_dataset(
      {
        "name": "synthetic",
        "seed": int(data["seed"]),
        "num_users": 20,
        "num_lm_sentences": int(data["num_lm_sentences"]),
        "lm_bias": float(data["lm_bias"]),
      }
    )
    train["synthetic"] = [str(t) for t in ds.split("lm")["text"]]
    held["synthetic"] = [str(t) for t in ds.split("lm_test")["text"]]
  if data["winobias"]:
    train["winobias"] = _winobias(data_dir, "dev")
    held["winobias"] = _winobias(data_dir, "test")
  if data["shakespeare_max_sequences"]:
    cap = int(data["shakespeare_max_sequences"])
    ds = sources.load_dataset({"name": "tiny_shakespeare", "dir": data["dir"]})
    train["shakespeare"] = _shakespeare_sequences(ds.split("train")["text"], max_len - 2, cap)
    held["shakespeare"] = _shakespeare_sequences(
      ds.split("test")["text"], max_len - 2, max(1, cap // 10)
    )
  return {"train": train, "eval": held}


def build_tokenizer(
  texts: list[str], pairs: Mapping[str, str], *, vocab_size: int, min_count: int
) -> tokenizers.WordTokenizer:
  """A word tokenizer whose vocabulary is closed under the gender swap.

  The vocabulary is built as usual (:meth:`WordTokenizer.build`), then the counterpart of every
  gendered word it holds is added if missing (``duke`` brings ``duchess``), replacing the least
  frequent non-gendered words so the size stays ``vocab_size``. Without this, a rare counterpart
  maps to ``UNK`` and neither CDA nor the teacher-probability modification can swap the
  frequent side (in Tiny Shakespeare: ``sir``, ``duke``, ``prince``, ``god``).

  Args:
    texts: training texts.
    pairs: the involutive gender word map.
    vocab_size: vocabulary cap including the 4 specials.
    min_count: minimum count of an ordinary word.

  Returns:
    The tokenizer.
  """
  base = tokenizers.WordTokenizer.build(texts, vocab_size=vocab_size, min_count=min_count)
  itos = [base.id_to_token(i) for i in range(base.vocab_size)]
  present = set(itos)
  missing = sorted({pairs[w] for w in present if w in pairs and pairs[w] not in present})
  if not missing:
    return base
  gendered = set(pairs)
  keep = len(itos) - len(missing) if len(itos) + len(missing) > vocab_size else len(itos)
  dropped = [w for w in itos[len(tokenizers.SPECIALS) :] if w not in gendered][::-1]
  drop = set(dropped[: len(itos) - keep])
  itos = [w for w in itos if w not in drop] + missing
  return tokenizers.WordTokenizer(itos, lowercase=base.lowercase)


def encode_lm(tokenizer: tokenizers.WordTokenizer, texts: list[str], max_len: int) -> dict:
  """``BOS`` + text + ``EOS`` arrays (``tokens``, ``mask``, ``weight``, ``index``)."""
  tokens, mask = tokenizer.encode_batch(texts, max_len, add_bos=True, add_eos=True)
  n = tokens.shape[0]
  return {
    "tokens": tokens,
    "mask": mask,
    "weight": np.ones((n,), np.float32),
    "index": np.arange(n, dtype=np.int32),
  }


def as_dataset(corpus: Mapping[str, Mapping[str, list[str]]]) -> dataset.TextDataset:
  """The corpus as a spine ``TextDataset`` (``train`` / ``test`` text; sources in metadata).

  Args:
    corpus: :func:`build_corpus`'s output.

  Returns:
    A dataset named ``crr_corpus`` whose splits concatenate the sources in order.
  """
  splits = {
    split: {"text": np.asarray([t for texts in corpus[key].values() for t in texts], object)}
    for split, key in (("train", "train"), ("test", "eval"))
  }
  counts = {key: {src: len(texts) for src, texts in corpus[key].items()} for key in corpus}
  return dataset.TextDataset("crr_corpus", splits, metadata={"sequences": counts})


__all__ = ["CORPUS_FIELDS", "as_dataset", "build_corpus", "build_tokenizer", "encode_lm"]
