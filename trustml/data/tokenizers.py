"""Word- and character-level tokenizers with fixed special ids.

Special ids: ``PAD = 0``, ``UNK = 1``, ``BOS = 2``, ``EOS = 3``. A vocabulary is built from
training text only (size cap, minimum count; ties broken alphabetically so the build is
deterministic), saved as JSON in the workdir and loaded back bit-identically.
"""

import json
import os
import pathlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from trustml.core import validation

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")

_WORD_RE = re.compile(r"[\w']+|[^\w\s]", re.UNICODE)


def split_words(text: str, lowercase: bool = True) -> list[str]:
  """Splits text into words and single punctuation marks."""
  if lowercase:
    text = text.lower()
  return _WORD_RE.findall(text)


class _Base:
  """Shared encode/decode/save logic over an ``id -> token`` list."""

  kind = "base"

  def __init__(self, itos: Sequence[str], *, lowercase: bool = True):
    if tuple(itos[: len(SPECIALS)]) != SPECIALS:
      raise ValueError(f"vocabulary must start with the special tokens {SPECIALS}")
    self._itos = list(itos)
    self._stoi = {t: i for i, t in enumerate(self._itos)}
    self.lowercase = lowercase

  @property
  def vocab_size(self) -> int:
    """Number of ids, specials included."""
    return len(self._itos)

  def token_to_id(self, token: str) -> int:
    """The id of ``token`` (``UNK`` if unknown)."""
    return self._stoi.get(token, UNK)

  def id_to_token(self, idx: int) -> str:
    """The token of id ``idx``."""
    return self._itos[int(idx)]

  def pieces(self, text: str) -> list[str]:
    """Splits ``text`` into vocabulary pieces (words or characters)."""
    raise NotImplementedError

  def join(self, pieces: Sequence[str]) -> str:
    """Inverse of :meth:`pieces` up to whitespace normalisation."""
    raise NotImplementedError

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    """Encodes one text into ids."""
    ids = [self._stoi.get(p, UNK) for p in self.pieces(text)]
    return ([BOS] if add_bos else []) + ids + ([EOS] if add_eos else [])

  def encode_batch(
    self,
    texts: Iterable[str],
    max_len: int,
    *,
    add_bos: bool = False,
    add_eos: bool = False,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Encodes texts into a fixed-shape padded array (truncating at ``max_len``).

    Args:
      texts: the texts.
      max_len: the static sequence length ``T``.
      add_bos: prepend ``BOS``.
      add_eos: append ``EOS`` (before truncation).

    Returns:
      ``tokens`` int32 ``[N, T]`` (0-padded) and ``mask`` bool ``[N, T]``.
    """
    validation.positive_int("max_len", max_len)
    rows = [self.encode(t, add_bos=add_bos, add_eos=add_eos)[:max_len] for t in texts]
    tokens = np.zeros((len(rows), max_len), np.int32)
    for i, r in enumerate(rows):
      tokens[i, : len(r)] = r
    return tokens, tokens != PAD

  def decode(self, ids: Iterable[int], *, strip_special: bool = True) -> str:
    """Decodes ids back to text (special tokens dropped by default)."""
    out = []
    for i in ids:
      i = int(i)
      if strip_special and i < len(SPECIALS):
        if i == EOS:
          break
        continue
      out.append(self._itos[i])
    return self.join(out)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the tokenizer as JSON."""
    pathlib.Path(path).write_text(
      json.dumps({"kind": self.kind, "lowercase": self.lowercase, "itos": self._itos})
    )

  @staticmethod
  def load(path: str | os.PathLike) -> "WordTokenizer | CharTokenizer":
    """Loads a tokenizer saved by :meth:`save` (either kind)."""
    d = json.loads(pathlib.Path(path).read_text())
    cls = {"word": WordTokenizer, "char": CharTokenizer}[d["kind"]]
    return cls(d["itos"], lowercase=d["lowercase"])

  def __eq__(self, other: object) -> bool:
    return (
      type(self) is type(other)
      and self._itos == other._itos  # type: ignore[attr-defined]
      and self.lowercase == other.lowercase  # type: ignore[attr-defined]
    )


def _build_itos(counts: Counter, vocab_size: int | None, min_count: int) -> list[str]:
  items = [(t, c) for t, c in counts.items() if c >= min_count and t not in SPECIALS]
  items.sort(key=lambda tc: (-tc[1], tc[0]))
  if vocab_size is not None:
    items = items[: max(vocab_size - len(SPECIALS), 0)]
  return list(SPECIALS) + [t for t, _ in items]


class WordTokenizer(_Base):
  """Word-level tokenizer (lower-cased words and punctuation).

  Example:
    >>> tok = WordTokenizer.build(["set an alarm", "play a song"], vocab_size=100)
    >>> tok.decode(tok.encode("play an alarm"))
    'play an alarm'
  """

  kind = "word"

  @classmethod
  def build(
    cls,
    texts: Iterable[str],
    *,
    vocab_size: int | None = None,
    min_count: int = 1,
    lowercase: bool = True,
  ) -> "WordTokenizer":
    """Builds the vocabulary from training texts.

    Args:
      texts: training texts only (never evaluation text).
      vocab_size: cap on the number of ids including the 4 specials (``None``: no cap).
      min_count: words seen fewer times map to ``UNK``.
      lowercase: lower-case before splitting.

    Returns:
      The tokenizer.

    Raises:
      ConfigError: for ``vocab_size`` < 5 or ``min_count`` < 1.
    """
    if vocab_size is not None:
      validation.positive_int("vocab_size", vocab_size)
      if vocab_size <= len(SPECIALS):
        raise validation.ConfigError(f"vocab_size={vocab_size} is invalid: must be > 4")
    validation.positive_int("min_count", min_count)
    counts: Counter = Counter()
    for t in texts:
      counts.update(split_words(t, lowercase))
    return cls(_build_itos(counts, vocab_size, min_count), lowercase=lowercase)

  def pieces(self, text: str) -> list[str]:
    return split_words(text, self.lowercase)

  def join(self, pieces: Sequence[str]) -> str:
    return " ".join(pieces)


class CharTokenizer(_Base):
  """Character-level tokenizer for language models (case kept by default)."""

  kind = "char"

  def __init__(self, itos: Sequence[str], *, lowercase: bool = False):
    super().__init__(itos, lowercase=lowercase)

  @classmethod
  def build(
    cls,
    texts: Iterable[str],
    *,
    vocab_size: int | None = None,
    min_count: int = 1,
    lowercase: bool = False,
  ) -> "CharTokenizer":
    """Builds a character vocabulary from training texts (same arguments as words)."""
    validation.positive_int("min_count", min_count)
    counts: Counter = Counter()
    for t in texts:
      counts.update(t.lower() if lowercase else t)
    return cls(_build_itos(counts, vocab_size, min_count), lowercase=lowercase)

  def pieces(self, text: str) -> list[str]:
    return list(text.lower() if self.lowercase else text)

  def join(self, pieces: Sequence[str]) -> str:
    return "".join(pieces)


def load(path: str | os.PathLike) -> WordTokenizer | CharTokenizer:
  """Loads a saved tokenizer of either kind."""
  return _Base.load(path)


__all__ = [
  "BOS",
  "EOS",
  "PAD",
  "SPECIALS",
  "UNK",
  "CharTokenizer",
  "WordTokenizer",
  "load",
  "split_words",
]
