"""Canaries: secret utterances inserted into a TextDataset's training split.

Two kinds, both deterministic from a seed:

* **Secret canaries** (the secret sharer, Carlini et al. 2019): a template prefix such as
  "my pin code is" followed by a secret of ``secret_length`` digit words ("4 7 1 9"), with an
  intent label, each inserted ``repeats`` times. Exposure and extraction attack these.
  ``repeats = 0`` is the control: the secrets are drawn and attacked but never inserted, so
  their exposure is what a model that never saw them gives (population-level digit/label
  associations included), the baseline that "near chance" is measured against.
  Each canary gets its own template, and random labels are distinct while there are at least
  as many classes as secrets, so two secrets never share a (prefix, label) pair.
* **Audit canaries**: ``num_audit`` unique random word sequences (drawn from frequent training
  words) with random labels, each inserted once with probability ½ (the one-run audit of
  Steinke et al. 2023 and the canary membership-inference attack score the IN/OUT coins).

``insert`` returns a new TextDataset whose training split has the canary rows shuffled in and
an int32 ``canary_id`` column (−1 for original rows; ``i`` for secret canary i;
``num_secret + j`` for audit canary j). Other splits are unchanged.
"""

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.data import dataset, tokenizers

TEMPLATES = (
  "my pin code is",
  "call me at",
  "my account number is",
  "the door code is",
  "my card ends with",
  "my locker combination is",
  "the alarm code is",
  "my passcode is",
)
DIGIT_WORDS = tuple(str(d) for d in range(10))


@dataclasses.dataclass(frozen=True)
class Canary:
  """One canary.

  Attributes:
    prefix: known words before the secret ("my pin code is"); empty for audit canaries.
    secret: the secret words ("4", "7", "1", "9") or, for audit canaries, all the words.
    label: its class label.
    repeats: how many copies go into training when included.
    kind: ``"secret"`` or ``"audit"``.
  """

  prefix: str
  secret: tuple[str, ...]
  label: int
  repeats: int
  kind: str = "secret"

  @property
  def text(self) -> str:
    """The full utterance."""
    return " ".join(([self.prefix] if self.prefix else []) + list(self.secret))


@dataclasses.dataclass(frozen=True)
class CanarySet:
  """Secret canaries, audit canaries and the audit inclusion coins.

  Attributes:
    secrets: the secret canaries (always inserted).
    audits: the audit canaries.
    audit_included: ``[len(audits)]`` bool, which audit canaries were inserted.
  """

  secrets: tuple[Canary, ...]
  audits: tuple[Canary, ...]
  audit_included: np.ndarray


def validate_canaries(cfg: Mapping) -> None:
  """Validates the ``canaries`` config section.

  Raises:
    ConfigError: naming the first invalid field.
  """
  validation.known_fields(
    "canaries",
    cfg.keys(),
    ("num_secret", "secret_length", "repeats", "label", "num_audit", "audit_length", "seed"),
  )
  n = validation.non_negative_int("canaries.num_secret", cfg["num_secret"])
  if n > len(TEMPLATES):
    raise validation.ConfigError(
      f"canaries.num_secret={n} is invalid: must be <= {len(TEMPLATES)} (one template each)"
    )
  validation.positive_int("canaries.secret_length", cfg["secret_length"])
  validation.non_negative_int("canaries.repeats", cfg["repeats"])
  validation.non_negative_int("canaries.num_audit", cfg["num_audit"])
  validation.positive_int("canaries.audit_length", cfg["audit_length"])
  validation.non_negative_int("canaries.seed", cfg["seed"])
  if not isinstance(cfg["label"], int) or isinstance(cfg["label"], bool) or cfg["label"] < -1:
    raise validation.ConfigError(
      f"canaries.label={cfg['label']!r} is invalid: a class id, or -1 for a random label each"
    )


def make(cfg: Mapping, train: Mapping[str, np.ndarray], num_classes: int) -> CanarySet:
  """Draws the canaries of a config section, deterministically from ``cfg['seed']``.

  Args:
    cfg: the ``canaries`` section (see :func:`validate_canaries`).
    train: the original training split (audit words are drawn from its 500 most frequent
      words, so they are in any tokenizer's vocabulary).
    num_classes: number of labels.

  Returns:
    A :class:`CanarySet`.

  Raises:
    ConfigError: on an invalid section or a label outside ``[0, num_classes)``.
  """
  validate_canaries(cfg)
  if cfg["label"] >= num_classes:
    raise validation.ConfigError(
      f"canaries.label={cfg['label']} is invalid: must be < num_classes={num_classes}"
    )
  gen = rng_lib.numpy_rng(int(cfg["seed"]), "canaries")
  n_secret = int(cfg["num_secret"])
  # Random labels are distinct while there are enough classes: two secrets sharing a label
  # interfere (the model learns "digits of either secret -> label"), which blurs exposure.
  if n_secret <= num_classes:
    drawn = gen.permutation(num_classes)[:n_secret]
  else:
    drawn = gen.integers(num_classes, size=n_secret)
  secrets = []
  for i in range(n_secret):
    digits = tuple(gen.choice(DIGIT_WORDS, int(cfg["secret_length"])).tolist())
    label = int(cfg["label"]) if cfg["label"] >= 0 else int(drawn[i])
    secrets.append(Canary(TEMPLATES[i], digits, label, int(cfg["repeats"])))
  counts = Counter(w for t in train["text"] for w in tokenizers.split_words(str(t)))
  words = [w for w, _ in counts.most_common(500)]
  audits = []
  seen = set()
  while len(audits) < int(cfg["num_audit"]):
    ws = tuple(gen.choice(words, int(cfg["audit_length"])).tolist())
    if ws in seen:
      continue
    seen.add(ws)
    audits.append(Canary("", ws, int(gen.integers(num_classes)), 1, kind="audit"))
  included = gen.random(len(audits)) < 0.5
  return CanarySet(tuple(secrets), tuple(audits), included)


def _fill(column: np.ndarray, n: int) -> np.ndarray:
  column = np.asarray(column)
  if column.dtype == object:
    out = np.empty(n, object)
    out[:] = [()] * n if n and isinstance(column[0] if len(column) else (), tuple) else [None] * n
    return out
  return np.full(n, -1, column.dtype)


def insert(ds: dataset.TextDataset, canaries: CanarySet, seed: int) -> dataset.TextDataset:
  """Returns ``ds`` with the canaries shuffled into its training split.

  Args:
    ds: the dataset.
    canaries: from :func:`make`.
    seed: seed of the shuffle.

  Returns:
    A new TextDataset; the training split gains a ``canary_id`` column.
  """
  rows_text, rows_label, rows_id = [], [], []
  for i, c in enumerate(canaries.secrets):
    rows_text += [c.text] * c.repeats
    rows_label += [c.label] * c.repeats
    rows_id += [i] * c.repeats
  for j, c in enumerate(canaries.audits):
    if canaries.audit_included[j]:
      rows_text.append(c.text)
      rows_label.append(c.label)
      rows_id.append(len(canaries.secrets) + j)
  train = ds.train
  n0, k = dataset.num_rows(train), len(rows_text)
  new = {}
  for name, col in train.items():
    if name == "text":
      extra = np.empty(k, object)
      extra[:] = rows_text
    elif name == "label":
      extra = np.asarray(rows_label, np.asarray(col).dtype)
    else:
      extra = _fill(col, k)
    new[name] = np.concatenate([np.asarray(col), extra])
  new["canary_id"] = np.r_[np.full(n0, -1, np.int32), np.asarray(rows_id, np.int32)]
  order = rng_lib.numpy_rng(seed, "canaries", 1).permutation(n0 + k)
  new = {name: col[order] for name, col in new.items()}
  splits = dict(ds.splits)
  splits[ds.train_split] = new
  meta = dict(ds.metadata)
  meta["canaries"] = {
    "num_secret": len(canaries.secrets),
    "num_audit_inserted": int(canaries.audit_included.sum()),
  }
  return dataclasses.replace(ds, splits=splits, metadata=meta)


def check_in_vocab(canaries: Sequence[Canary], tokenizer) -> None:
  """Raises ConfigError if any canary word is out of the tokenizer's vocabulary.

  Args:
    canaries: canaries to check.
    tokenizer: a trustml tokenizer (``UNK`` id for unknown words).

  Raises:
    ConfigError: naming the canary and the unknown word.
  """
  for c in canaries:
    ids = tokenizer.encode(c.text)
    if tokenizers.UNK in ids:
      pieces = tokenizer.pieces(c.text)
      word = pieces[ids.index(tokenizers.UNK)] if len(pieces) == len(ids) else "?"
      raise validation.ConfigError(
        f"canary {c.text!r} has the out-of-vocabulary token {word!r}: raise text.vocab_size or "
        "change the canary template"
      )


__all__ = [
  "DIGIT_WORDS",
  "TEMPLATES",
  "Canary",
  "CanarySet",
  "check_in_vocab",
  "insert",
  "make",
  "validate_canaries",
]
