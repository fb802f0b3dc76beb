"""Counterfactual gender swapping and the counterfactual gap.

A counterfactual ``x'`` of a text ``x`` replaces every gendered word by its counterpart
(``he`` <-> ``she``, ``actor`` <-> ``actress``, ...). The swap is a pure, *involutive* transform:
``swap_text(swap_text(x, pairs), pairs) == x`` for every string, because the word map is a
matching (each word has at most one counterpart, and the counterpart maps back) and the letter
case pattern of each word (lower, Title, UPPER) is carried over to its counterpart.

Word pairs come from the WinoBias swap lists (Zhao et al., NAACL 2018) in
``<data dir>/winobias_gender_swaps`` (``generalized_swaps.txt`` and
``extra_gendered_words.txt``), or from the list typed into ``third_party/gender_pairs/``
when no data directory is available. The raw lists are not a matching (``her`` is listed
against both ``him`` and ``his``; ``lady`` against ``gentleman`` and ``lord``), so
:func:`build_matching` keeps, greedily, the pairs listed most often (ties: first listed)
whose words are both still free. ``her`` is ambiguous (object ``him`` / possessive ``his``):
a word matching must pick one, so the matching pairs it with ``his`` (the far more frequent
masculine form; ``her_counterpart="him"`` for the other choice).

With ``pronoun_rule=True`` (the configs' default, ``fairness.her_counterpart="pos"``) the four
pronouns are swapped by part of speech, read from the next token: ``him -> her``,
``hers -> his``; ``her -> his`` when the next word (directly after whitespace) is an
open-class word (``her book``), else ``her -> him`` (``told her .``, ``gave her the``,
end of text, punctuation); likewise ``his -> her`` before an open-class word and
``his -> hers`` otherwise (``it is his .``). The closed class is :data:`CLOSED_CLASS`
(articles, determiners, prepositions, conjunctions, pronouns, auxiliaries, common adverbs).
The rule errs on object pronouns directly followed by a noun phrase without a determiner
(``gave him flowers -> gave her flowers -> gave his flowers``), so with it the swap is an
involution everywhere except there. Token-id swaps (:func:`swap_token_ids`) apply the same
rule when given :func:`pronoun_ids` (the next token is the next position); mapping a next-token
*distribution* back (``swap_table``) needs a permutation and uses the matching.

The counterfactual gap of a classifier ``f`` on ``x`` is ``|f(x) - f(x')|``; for class
probability vectors it is the total-variation distance ``0.5 * sum_c |p_c(x) - p_c(x')|``,
which equals ``|p_1(x) - p_1(x')|`` for two classes.
"""

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trustml.core import validation
from trustml.data import paths

SWAP_DIR = "winobias_gender_swaps"
SWAP_FILES = ("generalized_swaps.txt", "extra_gendered_words.txt")
THIRD_PARTY_FILE = (
  pathlib.Path(__file__).resolve().parents[2] / "third_party" / "gender_pairs" / "gender_pairs.tsv"
)
HER_COUNTERPARTS = ("pos", "his", "him")  # "pos": the matching uses "his" + the pronoun rule
PRONOUNS = ("her", "his", "him", "hers")
CLOSED_CLASS = frozenset(
  """a an the this that these those some any no every each all both either neither my your his
  her its our their me him us them i you he she it we they who whom what which whose myself
  himself herself to of in on at for with from by about into onto over under after before up
  down out off back around through across along as than like near without within and or but so
  if because when while though although whether nor is was are were be been being am will
  would can could shall should may might must do does did has have had not again too very
  now then there here also just only even still yet yesterday today tomorrow tonight always
  never often once twice""".split()
)

# Maximal runs of letters (any script); digits, apostrophes and punctuation split words.
_WORD_RE = re.compile(r"[^\W\d_]+")


def _read_pair_lines(lines: Iterable[str]) -> list[tuple[str, str]]:
  out = []
  for line in lines:
    parts = line.split()
    if len(parts) != 2:
      continue
    a, b = (p.lower().rstrip(".") for p in parts)  # "mr." -> "mr": words are letter runs.
    if a.isalpha() and b.isalpha() and a != b:
      out.append((a, b))
  return out


def build_matching(
  raw_pairs: Iterable[tuple[str, str]], her_counterpart: str = "his"
) -> dict[str, str]:
  """Turns a raw list of (word, counterpart) lines into an involutive word map.

  Args:
    raw_pairs: lower-case ``(a, b)`` pairs, possibly repeated in both directions and possibly
      conflicting (a word listed against two counterparts).
    her_counterpart: ``"his"`` or ``"him"``: which masculine form ``her`` is paired with
      (``"pos"`` pairs it with ``"his"``; the pronoun rule then decides per occurrence).

  Returns:
    A symmetric dict (``m[m[w]] == w`` for every key ``w``, and ``m[w] != w``).

  Raises:
    ConfigError: if ``her_counterpart`` is not ``"his"`` or ``"him"``.
  """
  validation.one_of("her_counterpart", her_counterpart, HER_COUNTERPARTS)
  her_counterpart = "his" if her_counterpart == "pos" else her_counterpart
  support: dict[frozenset, int] = {}
  first_seen: dict[frozenset, int] = {}
  for i, (a, b) in enumerate(raw_pairs):
    key = frozenset((a, b))
    support[key] = support.get(key, 0) + 1
    first_seen.setdefault(key, i)
  forced = frozenset(("her", her_counterpart))
  order = sorted(support, key=lambda k: (k != forced, -support[k], first_seen[k]))
  matching: dict[str, str] = {}
  for key in order:
    a, b = sorted(key)
    if a in matching or b in matching:
      continue
    matching[a] = b
    matching[b] = a
  return matching


def load_gender_pairs(
  data_dir: str | os.PathLike | None = None, her_counterpart: str = "his"
) -> dict[str, str]:
  """Loads the gender word pairs as an involutive lower-case word map.

  Reads ``<data dir>/winobias_gender_swaps/{generalized_swaps,extra_gendered_words}.txt``
  (data dir resolved by :func:`trustml.data.paths.resolve_data_dir`); when no data directory
  holds that folder, falls back to ``third_party/gender_pairs/gender_pairs.tsv``.

  Args:
    data_dir: the configured data directory (``data.dir``); ``None`` resolves the default.
    her_counterpart: ``"his"`` (default), ``"him"`` or ``"pos"`` (as ``"his"``; pass
      ``pronoun_rule=True`` to the swap); see the module docstring.

  Returns:
    dict word -> counterpart, symmetric, lower case, letters only.

  Raises:
    ConfigError: if neither source exists, or ``her_counterpart`` is invalid.

  Example:
    >>> pairs = load_gender_pairs()
    >>> pairs["he"], pairs["she"]
    ('she', 'he')
  """
  validation.one_of("her_counterpart", her_counterpart, HER_COUNTERPARTS)
  root = paths.resolve_data_dir(data_dir)
  folder = None if root is None else root / SWAP_DIR
  lines: list[str] = []
  if folder is not None and folder.is_dir():
    for name in SWAP_FILES:
      lines.extend((folder / name).read_text(encoding="utf-8").splitlines())
  elif THIRD_PARTY_FILE.is_file():
    lines = THIRD_PARTY_FILE.read_text(encoding="utf-8").splitlines()
    lines = [ln for ln in lines if not ln.startswith("#")]
  else:
    raise validation.ConfigError(
      f"data.dir={str(data_dir or root)!r} is invalid: it has no {SWAP_DIR}/ folder and "
      f"{THIRD_PARTY_FILE} is missing"
    )
  return build_matching(_read_pair_lines(lines), her_counterpart)


def check_pairs(pairs: Mapping[str, str]) -> None:
  """Checks a word map is an involution on lower-case letter words.

  Raises:
    ConfigError: naming the first offending entry.
  """
  for word, other in pairs.items():
    if not (word.isalpha() and other.isalpha() and word == word.lower() and other == other.lower()):
      raise validation.ConfigError(
        f"pairs[{word!r}]={other!r} is invalid: words must be lower-case letters only"
      )
    if word == other or pairs.get(other) != word:
      raise validation.ConfigError(
        f"pairs[{word!r}]={other!r} is invalid: the map must be an involution "
        f"(pairs[{other!r}] must be {word!r})"
      )


def _match_case(template: str, word: str) -> str:
  if template.islower():
    return word
  if template.isupper() and len(template) > 1:
    return word.upper()
  if template[0].isupper() and template[1:].islower():
    return word[0].upper() + word[1:]
  if len(template) == 1 and template.isupper():
    return word[0].upper() + word[1:] if len(word) > 1 else word.upper()
  return template  # Mixed case (e.g. "hE"): left as is, so the swap stays an involution.


def _case_kind(word: str) -> str:
  if word.islower():
    return "lower"
  if word.isupper() and len(word) > 1:
    return "upper"
  if word[0].isupper() and (len(word) == 1 or word[1:].islower()):
    return "title"
  return "mixed"


def swap_word(word: str, pairs: Mapping[str, str]) -> str:
  """Swaps one word, preserving its case pattern (lower, Title, UPPER).

  Words of mixed case (``"hE"``) and words whose counterpart cannot carry the same case
  pattern are returned unchanged, which keeps the swap an involution.
  """
  other = pairs.get(word.lower())
  if other is None:
    return word
  kind = _case_kind(word)
  if kind == "mixed":
    return word
  out = _match_case(word, other)
  if _case_kind(out) != kind:  # e.g. "HE" (upper) -> "S" would not map back.
    return word
  return out


def _pronoun_target(word: str, next_word: str | None) -> str:
  """The counterpart of one of :data:`PRONOUNS` (lower case) by the next-token rule."""
  open_next = next_word is not None and next_word.lower() not in CLOSED_CLASS
  if word == "him":
    return "her"
  if word == "hers":
    return "his"
  if word == "his":
    return "her" if open_next else "hers"
  return "his" if open_next else "him"


def _swap(text: str, pairs: Mapping[str, str], pronoun_rule: bool) -> str:
  if not pronoun_rule:
    return _WORD_RE.sub(lambda m: swap_word(m.group(0), pairs), text)
  matches = list(_WORD_RE.finditer(text))
  out, pos = [], 0
  for i, m in enumerate(matches):
    word = m.group(0)
    low = word.lower()
    if low in PRONOUNS:
      nxt = None
      if i + 1 < len(matches) and not text[m.end() : matches[i + 1].start()].strip():
        nxt = matches[i + 1].group(0)
      target = _pronoun_target(low, nxt)
      new = swap_word(word, {low: target, target: low})
    else:
      new = swap_word(word, pairs)
    out.append(text[pos : m.start()] + new)
    pos = m.end()
  out.append(text[pos:])
  return "".join(out)


def swap_text(text: str, pairs: Mapping[str, str], *, pronoun_rule: bool = False) -> str:
  """Replaces every gendered word of ``text`` by its counterpart, preserving case.

  Words are maximal runs of letters, so ``"He's"`` becomes ``"She's"`` and ``"Mr."`` becomes
  ``"Mrs."``; everything between words is kept byte for byte.

  Args:
    text: input string.
    pairs: an involutive lower-case word map (from :func:`load_gender_pairs`).
    pronoun_rule: swap her/his/him/hers by the next-token rule of the module docstring
      instead of the matching.

  Returns:
    The counterfactual string; ``swap_text(swap_text(t, p), p) == t`` (with the pronoun rule:
    except where the rule misreads an object pronoun before a bare noun).

  Raises:
    ConfigError: if ``pairs`` is not an involution.

  Example:
    >>> swap_text("He told HIS sister.", {"he": "she", "she": "he", "his": "her",
    ...   "her": "his", "sister": "brother", "brother": "sister"})
    'She told HER brother.'
  """
  check_pairs(pairs)
  return _swap(text, pairs, pronoun_rule)


def swap_texts(
  texts: Iterable[str], pairs: Mapping[str, str], *, pronoun_rule: bool = False
) -> list[str]:
  """:func:`swap_text` over a sequence (validates ``pairs`` once)."""
  check_pairs(pairs)
  return [_swap(t, pairs, pronoun_rule) for t in texts]


def count_swappable(text: str, pairs: Mapping[str, str]) -> int:
  """Number of words of ``text`` that :func:`swap_text` would change."""
  return sum(swap_word(m.group(0), pairs) != m.group(0) for m in _WORD_RE.finditer(text))


def token_id_pairs(
  pairs: Mapping[str, str], token_to_id: Callable[[str], int | None], unk_id: int | None = 1
) -> np.ndarray:
  """Maps a word matching to token-id pairs ``[P, 2]`` (each pair once, both in vocabulary).

  Args:
    pairs: involutive word map.
    token_to_id: e.g. ``tokenizer.token_to_id``; may return ``None`` or ``unk_id`` for
      out-of-vocabulary words, whose pairs are dropped.
    unk_id: the unknown-token id (``trustml.data.tokenizers.UNK``), or ``None``.

  Returns:
    int32 array ``[P, 2]`` of distinct ids; no id appears twice.
  """
  check_pairs(pairs)
  out = []
  for a, b in sorted(pairs.items()):
    if a >= b:
      continue
    ia, ib = token_to_id(a), token_to_id(b)
    if ia is None or ib is None or ia == unk_id or ib == unk_id or ia == ib:
      continue
    out.append((int(ia), int(ib)))
  arr = np.asarray(out, dtype=np.int32).reshape(-1, 2)
  if len(np.unique(arr)) != arr.size:
    raise validation.ConfigError("token_to_id maps two gendered words to one id")
  return arr


def swap_table(id_pairs: Mapping[int, int] | jax.typing.ArrayLike, vocab_size: int) -> np.ndarray:
  """A permutation table ``[vocab_size]`` that swaps each id pair and fixes every other id."""
  if isinstance(id_pairs, Mapping):
    id_pairs = np.asarray(list(id_pairs.items()), dtype=np.int64).reshape(-1, 2)
  id_pairs = np.asarray(id_pairs, dtype=np.int64).reshape(-1, 2)
  if id_pairs.size and (id_pairs.min() < 0 or id_pairs.max() >= vocab_size):
    raise validation.ConfigError(f"id_pairs has ids outside [0, {vocab_size})")
  table = np.arange(vocab_size, dtype=np.int32)
  for a, b in id_pairs:
    if table[a] not in (a, b) or table[b] not in (a, b):
      raise validation.ConfigError(f"id_pairs is not a matching: id {a} or {b} is paired twice")
    table[a], table[b] = b, a
  return table


@dataclasses.dataclass(frozen=True)
class PronounIds:
  """Token ids of her/his/him/hers (``-1`` when out of vocabulary) and the open-class table.

  Attributes:
    her: id of ``her``.
    his: id of ``his``.
    him: id of ``him``.
    hers: id of ``hers``.
    open_class: ``[V]`` bool, True for alphabetic tokens outside :data:`CLOSED_CLASS`.
  """

  her: int
  his: int
  him: int
  hers: int
  open_class: np.ndarray


def pronoun_ids(itos: Sequence[str], unk_id: int | None = 1) -> PronounIds:
  """:class:`PronounIds` of a vocabulary (``itos[i]`` is token ``i``'s string)."""
  index = {t.lower(): i for i, t in enumerate(itos) if i != unk_id}
  open_class = np.array(
    [t.isalpha() and t.lower() not in CLOSED_CLASS and i != unk_id for i, t in enumerate(itos)],
    dtype=bool,
  )
  return PronounIds(*(index.get(w, -1) for w in ("her", "his", "him", "hers")), open_class)


def _pronoun_ids_rule(tokens: jax.Array, swapped: jax.Array, p: PronounIds) -> jax.Array:
  """Overrides the four pronouns in ``swapped`` by the next-token rule (next position)."""
  v = p.open_class.shape[0]
  table = jnp.asarray(p.open_class)
  nxt = jnp.concatenate([tokens[..., 1:], jnp.full(tokens.shape[:-1] + (1,), -1)], axis=-1)
  open_next = jnp.where((nxt >= 0) & (nxt < v), table[jnp.clip(nxt, 0, v - 1)], False)
  out = swapped

  def put(cond, target):
    return jnp.where(cond, target, out) if target >= 0 else out

  if p.him >= 0:
    out = put(tokens == p.him, p.her)
  if p.hers >= 0:
    out = put(tokens == p.hers, p.his)
  if p.his >= 0:
    out = put((tokens == p.his) & open_next, p.her)
    out = put((tokens == p.his) & ~open_next, p.hers)
  if p.her >= 0:
    out = put((tokens == p.her) & open_next, p.his)
    out = put((tokens == p.her) & ~open_next, p.him)
  return out


def swap_token_ids(
  tokens: jax.typing.ArrayLike,
  id_pairs: Mapping[int, int] | jax.typing.ArrayLike,
  *,
  pronouns: PronounIds | None = None,
) -> jax.Array:
  """Swaps gendered token ids in a token array of any shape (an involution).

  Args:
    tokens: int array of token ids (the last axis is the sequence).
    id_pairs: ``[P, 2]`` id pairs (from :func:`token_id_pairs`) or a dict id -> id (either one
      direction or both).
    pronouns: apply the her/his/him/hers next-token rule (:func:`pronoun_ids`); then the swap
      is an involution except where the rule misreads an object pronoun before a bare noun.

  Returns:
    int32 array of the same shape with every paired id replaced by its partner.

  Example:
    >>> swap_token_ids(jnp.array([[5, 7, 9]]), [[5, 9]]).tolist()
    [[9, 7, 5]]
  """
  tokens = jnp.asarray(tokens)
  if isinstance(id_pairs, Mapping):
    id_pairs = {min(a, b): max(a, b) for a, b in id_pairs.items()}
  pairs_arr = (
    np.asarray(list(id_pairs.items()) if isinstance(id_pairs, Mapping) else id_pairs)
    .astype(np.int64)
    .reshape(-1, 2)
  )
  size = int(pairs_arr.max()) + 1 if pairs_arr.size else 1
  table = jnp.asarray(swap_table(pairs_arr, size))
  inside = (tokens >= 0) & (tokens < size)
  out = jnp.where(inside, table[jnp.clip(tokens, 0, size - 1)], tokens)
  if pronouns is not None:
    out = _pronoun_ids_rule(tokens, out, pronouns)
  return out.astype(jnp.int32)


def counterfactual_gap(scores: jax.typing.ArrayLike, cf_scores: jax.typing.ArrayLike) -> np.ndarray:
  """Per-example counterfactual gap ``|f(x) - f(x')|``.

  Args:
    scores: ``[N]`` scalar scores or ``[N, C]`` class probabilities on the originals.
    cf_scores: the same on the counterfactuals.

  Returns:
    float64 ``[N]``: ``|s - s'|`` for scalar scores; the total-variation distance
    ``0.5 * sum_c |p_c - p'_c|`` for probability vectors.

  Raises:
    ConfigError: if the shapes differ or a score is NaN/inf.
  """
  s = validation.finite_array("scores", scores)
  c = validation.finite_array("cf_scores", cf_scores)
  if s.shape != c.shape or s.ndim not in (1, 2):
    raise validation.ConfigError(
      f"cf_scores shape {c.shape} is invalid: must equal scores shape {s.shape} ([N] or [N, C])"
    )
  if s.ndim == 1:
    return np.abs(s - c)
  return 0.5 * np.abs(s - c).sum(-1)


__all__ = [
  "CLOSED_CLASS",
  "HER_COUNTERPARTS",
  "PRONOUNS",
  "PronounIds",
  "build_matching",
  "check_pairs",
  "count_swappable",
  "counterfactual_gap",
  "load_gender_pairs",
  "pronoun_ids",
  "swap_table",
  "swap_text",
  "swap_texts",
  "swap_token_ids",
  "swap_word",
  "token_id_pairs",
]
