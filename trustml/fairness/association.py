"""Intrinsic association tests: WEAT, SEAT and CEAT.

WEAT (Caliskan et al., Science 2017). Target sets ``X``, ``Y`` (equal size) and attribute sets
``A``, ``B`` of vectors. With cosine similarity ``cos``:

* ``s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)``
* effect size ``d = (mean_x s(x) - mean_y s(y)) / std_{w in X ∪ Y} s(w)`` (sample std, ddof=1)
* statistic ``S = Σ_x s(x) - Σ_y s(y)``; one-sided permutation p-value
  ``P[S(X_i, Y_i) >= S(X, Y)]`` over all equal-size re-partitions ``(X_i, Y_i)`` of ``X ∪ Y``
  by :func:`scipy.stats.permutation_test` (ties and the observed partition count, as in May
  et al.'s ``sent-bias``): exact enumeration when the number of partitions is at most
  ``max_exact_partitions``, otherwise ``(b + 1) / (m + 1)`` over ``num_samples`` random
  partitions.

SEAT (May et al., NAACL 2019): WEAT on sentence encodings of semantically bleached templates
(``This is John.``) from ``<data dir>/seat_sent_bias/tests/*.jsonl``, encoded here with any
Model's ``pooled`` sentence representation.

CEAT (Guo & Caliskan, AIES 2021): each word has many contextual embeddings (one per corpus
sentence containing it). Draw ``N`` samples, each taking one random context per word, and
compute WEAT effect size ``ES_i`` and in-sample variance ``V_i`` (variance, ddof=1, of
``s(w, A, B)`` over ``X ∪ Y``). Pool with DerSimonian–Laird random effects:
``w_i = 1/V_i``, fixed mean ``ES_F = Σ w_i ES_i / Σ w_i``, ``Q = Σ w_i (ES_i - ES_F)²``,
``τ² = max(0, (Q - (N-1)) / (Σ w_i - Σ w_i² / Σ w_i))``, ``w*_i = 1/(V_i + τ²)``,
combined effect ``CES = Σ w*_i ES_i / Σ w*_i``, ``SE = sqrt(1 / Σ w*_i)``, ``z = CES / SE``.
A word's contextual embedding is, as in Guo & Caliskan, the word's *own* vector in each
context sentence: the Model's ``token_states`` at the word's position
(``representation="token"``, the default; a bag of embeddings gives the static embedding, so
CEAT then reduces to WEAT with ``τ² = 0``). ``representation="pooled"`` keeps trustml's earlier
variant, the ``pooled`` encoding of the whole context sentence.

Statistics are NumPy/SciPy in float64; encodings come from a jitted JAX function.
"""

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats
from statsmodels.stats import meta_analysis

from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.data import paths

SEAT_DIR = "seat_sent_bias"
ALTERNATIVES = ("greater", "two-sided")
REPRESENTATIONS = ("token", "pooled")


@dataclasses.dataclass(frozen=True)
class WeatResult:
  """Result of one WEAT/SEAT test.

  Attributes:
    effect_size: Cohen's-d style effect size (ddof=1 pooled std).
    p_value: one-sided permutation p-value.
    statistic: ``S(X, Y, A, B)``.
    exact: whether the p-value enumerated every partition.
    num_partitions: partitions enumerated or sampled.
  """

  effect_size: float
  p_value: float
  statistic: float
  exact: bool
  num_partitions: int


@dataclasses.dataclass(frozen=True)
class CeatResult:
  """DerSimonian–Laird random-effects pooling of per-sample effect sizes.

  Attributes:
    effect_size: combined effect size ``CES``.
    standard_error: ``SE`` of ``CES``.
    p_value: from ``z = CES / SE`` under the standard normal (``alternative``).
    q: Cochran's heterogeneity statistic ``Q``.
    tau2: between-sample variance ``τ²``.
    fixed_effect: inverse-variance fixed-effect mean ``ES_F``.
    effect_sizes: the ``N`` per-sample effect sizes.
    variances: the ``N`` per-sample variances.
  """

  effect_size: float
  standard_error: float
  p_value: float
  q: float
  tau2: float
  fixed_effect: float
  effect_sizes: np.ndarray
  variances: np.ndarray


def _unit(x: np.ndarray) -> np.ndarray:
  x = validation.finite_array("embedding set", x)
  if x.ndim != 2:
    raise validation.ConfigError(f"embedding set shape {x.shape} is invalid: must be [n, d]")
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check_sets(x, y, a, b) -> None:
  for name, s in (("X", x), ("Y", y), ("A", a), ("B", b)):
    if len(s) == 0:
      raise validation.ConfigError(f"WEAT set {name} is empty")
    if isinstance(s, np.ndarray) and np.issubdtype(s.dtype, np.number):  # not word lists
      validation.finite_array(f"WEAT set {name} embeddings", s)
  if len(x) != len(y):
    raise validation.ConfigError(
      f"WEAT target sets are invalid: X has {len(x)} items and Y has {len(y)}; they must be equal"
    )
  if len(x) < 2:
    raise validation.ConfigError("WEAT target sets are invalid: need at least 2 items each")


def association(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``s(w, A, B)`` for each row of ``w``: mean cosine to A minus mean cosine to B."""
  w, a, b = _unit(w), _unit(a), _unit(b)
  return (w @ a.T).mean(-1) - (w @ b.T).mean(-1)


def effect_size_and_variance(x, y, a, b) -> tuple[float, float]:
  """WEAT effect size and the in-sample variance of ``s`` over ``X ∪ Y`` (ddof=1)."""
  _check_sets(x, y, a, b)
  sx, sy = association(x, a, b), association(y, a, b)
  s_all = np.concatenate([sx, sy])
  var = float(np.var(s_all, ddof=1))
  return float((sx.mean() - sy.mean()) / math.sqrt(var)) if var > 0 else 0.0, var


def _sum_difference(sx: np.ndarray, sy: np.ndarray, axis: int = -1) -> np.ndarray:
  """``S = Σ_X s - Σ_Y s`` along ``axis`` (vectorised for :func:`scipy.stats.permutation_test`)."""
  return np.sum(sx, axis=axis) - np.sum(sy, axis=axis)


def permutation_p_value(
  s_values: np.ndarray,
  n_x: int,
  *,
  max_exact_partitions: int = 100_000,
  num_samples: int = 10_000,
  seed: int = 0,
) -> tuple[float, bool, int]:
  """One-sided permutation p-value of ``S = Σ_X s - Σ_Y s`` by :func:`scipy.stats.permutation_test`.

  The convention is scipy's and May et al.'s ``sent-bias``: partitions whose statistic ties the
  observed one (up to scipy's relative tolerance) count, and so does the observed partition, so
  an exact p-value is at least ``1 / C(|X ∪ Y|, |X|)``; a sampled one is ``(b + 1) / (m + 1)``
  with ``b`` of ``m`` random partitions at least as large as the observed statistic.

  Args:
    s_values: ``s(w, A, B)`` for ``X`` (first ``n_x`` rows) then ``Y``.
    n_x: size of ``X`` (equal to the size of ``Y``).
    max_exact_partitions: enumerate all partitions when there are at most this many.
    num_samples: random partitions otherwise (stream ``"permutation"`` of ``seed``).
    seed: root seed for sampled partitions.

  Returns:
    ``(p_value, exact, num_partitions)``.

  Raises:
    ConfigError: on non-finite ``s_values`` or a non-positive ``num_samples``.

  Example:
    >>> permutation_p_value(np.array([1.0, 0.9, 0.1, 0.0]), 2)[0]  # 1 of 6 partitions
    0.16666666666666666
  """
  s = validation.finite_array("s_values", s_values)
  num_partitions = math.comb(len(s), n_x)
  exact = num_partitions <= max_exact_partitions
  if not exact:
    validation.positive_int("num_samples", num_samples)
  result = stats.permutation_test(
    (s[:n_x], s[n_x:]),
    _sum_difference,
    permutation_type="independent",
    vectorized=True,
    n_resamples=np.inf if exact else num_samples,
    alternative="greater",
    rng=rng_lib.numpy_rng(seed, "permutation"),
  )
  return float(result.pvalue), exact, num_partitions if exact else num_samples


def weat(
  x: np.ndarray,
  y: np.ndarray,
  a: np.ndarray,
  b: np.ndarray,
  *,
  max_exact_partitions: int = 100_000,
  num_samples: int = 10_000,
  seed: int = 0,
) -> WeatResult:
  """Runs WEAT on embedding sets ``X, Y`` (targets) and ``A, B`` (attributes).

  Args:
    x: ``[n, d]`` target set X.
    y: ``[n, d]`` target set Y (same size as X).
    a: ``[m, d]`` attribute set A.
    b: ``[k, d]`` attribute set B.
    max_exact_partitions: exact p-value up to this many partitions.
    num_samples: sampled partitions beyond that.
    seed: seed of the sampled partitions.

  Returns:
    A :class:`WeatResult`.

  Raises:
    ConfigError: on unequal or empty target sets, or empty attribute sets.

  Example:
    >>> r = weat(np.eye(4)[:2], np.eye(4)[2:], np.eye(4)[:1], np.eye(4)[2:3])
  """
  _check_sets(x, y, a, b)
  es, _ = effect_size_and_variance(x, y, a, b)
  s_all = np.concatenate([association(x, a, b), association(y, a, b)])
  p, exact, n = permutation_p_value(
    s_all,
    len(x),
    max_exact_partitions=max_exact_partitions,
    num_samples=num_samples,
    seed=seed,
  )
  stat = float(s_all[: len(x)].sum() - s_all[len(x) :].sum())
  return WeatResult(effect_size=es, p_value=p, statistic=stat, exact=exact, num_partitions=n)


def random_effects(
  effect_sizes: Sequence[float] | np.ndarray,
  variances: Sequence[float] | np.ndarray,
  alternative: str = "greater",
) -> CeatResult:
  """DerSimonian–Laird random-effects pooling (the CEAT combined effect size) by statsmodels.

  ``statsmodels.stats.meta_analysis.combine_effects(method_re="dl")`` computes the pooled
  effect, its standard error, ``Q`` and ``τ²`` (the formulas of the module docstring).

  Args:
    effect_sizes: ``[N]`` per-sample effect sizes.
    variances: ``[N]`` per-sample variances (> 0).
    alternative: ``"greater"`` (one-sided, ``P[Z > z]``) or ``"two-sided"``.

  Returns:
    A :class:`CeatResult`. When ``τ² = 0`` the combined effect equals the fixed-effect mean.

  Raises:
    ConfigError: on empty input, mismatched lengths, non-positive variances, bad alternative.
  """
  validation.one_of("alternative", alternative, ALTERNATIVES)
  es = validation.finite_array("effect_sizes", effect_sizes)
  v = validation.finite_array("variances", variances)
  if es.ndim != 1 or es.shape != v.shape or es.size == 0:
    raise validation.ConfigError("effect_sizes and variances must be equal-length non-empty [N]")
  if (v <= 0).any():
    raise validation.ConfigError("variances are invalid: must be > 0")
  if es.size == 1:  # statsmodels needs two studies for Q; one sample is its own fixed effect
    res = dict(ces=float(es[0]), se=float(math.sqrt(v[0])), q=0.0, tau2=0.0, fixed=float(es[0]))
  else:
    with np.errstate(invalid="ignore", divide="ignore"):  # sqrt of τ² < 0, 1/0 when τ² = 0
      r = meta_analysis.combine_effects(es, v, method_re="dl")
    # DerSimonian–Laird truncates τ² at 0; statsmodels 0.15 reports the raw moment estimate,
    # and with τ² = 0 the random-effects pool is the fixed-effect one.
    tau2 = max(float(r.tau2), 0.0)
    res = dict(
      ces=float(r.mean_effect_re if tau2 > 0 else r.mean_effect_fe),
      se=float(r.sd_eff_w_re if tau2 > 0 else r.sd_eff_w_fe),
      q=max(float(r.q), 0.0),  # a sum of squares; statsmodels can return -1e-11 for equal ES_i
      tau2=tau2,
      fixed=float(r.mean_effect_fe),
    )
  z = res["ces"] / res["se"]
  p = float(stats.norm.sf(z) if alternative == "greater" else 2 * stats.norm.sf(abs(z)))
  return CeatResult(res["ces"], res["se"], p, res["q"], res["tau2"], res["fixed"], es, v)


def ceat(
  contexts: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
  *,
  num_samples: int,
  seed: int,
  alternative: str = "greater",
) -> CeatResult:
  """CEAT: random-effects pooled WEAT over sampled contextual embeddings.

  Args:
    contexts: ``{"X": [...], "Y": [...], "A": [...], "B": [...]}``; each list has one entry per
      word, a ``[n_contexts, d]`` array of that word's contextual embeddings (n >= 1).
    num_samples: ``N`` samples (one random context per word each).
    seed: root seed (stream ``"ceat"``).
    alternative: see :func:`random_effects`.

  Returns:
    A :class:`CeatResult`.

  Raises:
    ConfigError: on missing sets, unequal target sets, words without contexts.
  """
  validation.positive_int("num_samples", num_samples)
  for name in ("X", "Y", "A", "B"):
    if name not in contexts:
      raise validation.ConfigError(f"contexts is missing set {name!r}")
    for i, arr in enumerate(contexts[name]):
      if np.asarray(arr).ndim != 2 or len(arr) == 0:
        raise validation.ConfigError(f"contexts[{name!r}][{i}] is invalid: needs [n>=1, d]")
      validation.finite_array(f"contexts[{name!r}][{i}]", arr)
  _check_sets(*(contexts[k] for k in ("X", "Y", "A", "B")))
  gen = rng_lib.numpy_rng(seed, "ceat")
  es, var = [], []
  for _ in range(num_samples):
    sets = [
      np.stack([np.asarray(c)[gen.integers(len(c))] for c in contexts[k]])
      for k in ("X", "Y", "A", "B")
    ]
    e, v = effect_size_and_variance(*sets)
    es.append(e)
    var.append(max(v, 1e-12))
  return random_effects(es, var, alternative)


# --- encoders and SEAT ----------------------------------------------------------------------


def encode_texts(
  model, params, tokenizer, texts: Sequence[str], max_len: int, batch_size: int = 64
) -> np.ndarray:
  """Pooled sentence encodings ``[N, D]`` of ``texts`` (jitted, fixed-shape batches).

  Args:
    model: a :class:`trustml.models.contract.Model`.
    params: its parameters.
    tokenizer: a :mod:`trustml.data.tokenizers` tokenizer.
    texts: sentences.
    max_len: static sequence length.
    batch_size: static batch size.

  Returns:
    float64 ``[N, D]``.
  """
  validation.positive_int("batch_size", batch_size)
  tokens, mask = tokenizer.encode_batch(list(texts), max_len)
  n = tokens.shape[0]
  pooled = _jitted(model.pooled)
  out = []
  for start in range(0, n, batch_size):
    tk = tokens[start : start + batch_size]
    mk = mask[start : start + batch_size]
    pad = batch_size - tk.shape[0]
    if pad:
      tk = np.concatenate([tk, np.zeros((pad, tk.shape[1]), tk.dtype)])
      mk = np.concatenate([mk, np.zeros((pad, mk.shape[1]), mk.dtype)])
    batch = {
      "tokens": jnp.asarray(tk),
      "mask": jnp.asarray(mk),
      "label": jnp.zeros((batch_size,), jnp.int32),
      "weight": jnp.ones((batch_size,), jnp.float32),
    }
    out.append(np.asarray(pooled(params, batch))[: batch_size - pad])
  return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


def encode_token_states(
  model,
  params,
  tokenizer,
  texts: Sequence[str],
  positions: Sequence[int],
  max_len: int,
  batch_size: int = 64,
) -> np.ndarray:
  """The Model's ``token_states`` of each text at one position: ``[N, H]`` float64.

  Args:
    model: a Model with ``token_states``.
    params: its parameters.
    tokenizer: the tokenizer (``encode_batch``; piece ``i`` of a text is token ``i``).
    texts: sentences.
    positions: for each text, the position of the word whose vector is wanted (``< max_len``).
    max_len: static sequence length.
    batch_size: static batch size.

  Raises:
    ConfigError: if the model has no ``token_states`` or a position is outside the text.
  """
  if model.token_states is None:
    raise validation.ConfigError(
      f"model {model.name!r} is invalid for token-level CEAT: it has no token_states "
      "(use fairness.ceat_representation='pooled')"
    )
  validation.positive_int("batch_size", batch_size)
  tokens, mask = tokenizer.encode_batch(list(texts), max_len)
  pos = np.asarray(positions, np.int64)
  if pos.shape != (tokens.shape[0],) or (pos < 0).any() or (pos >= max_len).any():
    raise validation.ConfigError(f"positions are invalid: need one position in [0, {max_len})")
  if not np.asarray(mask, bool)[np.arange(len(pos)), pos].all():
    raise validation.ConfigError("positions are invalid: one falls on padding")
  fn = _jitted(model.token_states)
  out = []
  for start in range(0, tokens.shape[0], batch_size):
    tk, mk = tokens[start : start + batch_size], mask[start : start + batch_size]
    pad = batch_size - tk.shape[0]
    if pad:
      tk = np.concatenate([tk, np.zeros((pad, tk.shape[1]), tk.dtype)])
      mk = np.concatenate([mk, np.zeros((pad, mk.shape[1]), mk.dtype)])
    batch = {
      "tokens": jnp.asarray(tk),
      "mask": jnp.asarray(mk),
      "label": jnp.zeros((batch_size,), jnp.int32),
      "weight": jnp.ones((batch_size,), jnp.float32),
    }
    states = np.asarray(fn(params, batch))[: batch_size - pad]
    out.append(states[np.arange(len(states)), pos[start : start + batch_size]])
  return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


_POOLED_CACHE: dict[object, object] = {}


def _jitted(fun):
  # Keyed by the function object itself (held by the cache), so ids are never reused.
  if fun not in _POOLED_CACHE:
    _POOLED_CACHE[fun] = jax.jit(fun)
  return _POOLED_CACHE[fun]


def load_seat_test(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
  """Loads one SEAT/WEAT test file as ``{"X", "Y", "A", "B"} -> list of strings``.

  Args:
    name: test name, e.g. ``"sent-weat6"`` (file ``tests/<name>.jsonl``).
    data_dir: configured data directory.

  Raises:
    ConfigError: if the folder or the test is missing (naming the available tests).
  """
  folder = paths.require_dataset_dir(SEAT_DIR, data_dir) / "tests"
  path = folder / f"{name}.jsonl"
  if not path.is_file():
    names = sorted(p.stem for p in folder.glob("*.jsonl"))
    raise validation.ConfigError(f"seat test {name!r} is unknown: available are {', '.join(names)}")
  d = json.loads(path.read_text(encoding="utf-8"))
  return {
    "X": list(d["targ1"]["examples"]),
    "Y": list(d["targ2"]["examples"]),
    "A": list(d["attr1"]["examples"]),
    "B": list(d["attr2"]["examples"]),
  }


def seat(
  model,
  params,
  tokenizer,
  test: Mapping[str, Sequence[str]],
  *,
  max_len: int = 32,
  batch_size: int = 64,
  **weat_kwargs,
) -> WeatResult:
  """SEAT: WEAT on a Model's pooled encodings of the test's sentences.

  Raises:
    ConfigError: on unequal target sets (before any encoding).
  """
  _check_sets(test["X"], test["Y"], test["A"], test["B"])
  enc = {k: encode_texts(model, params, tokenizer, test[k], max_len, batch_size) for k in test}
  return weat(enc["X"], enc["Y"], enc["A"], enc["B"], **weat_kwargs)


def word_position(word: str, text: str, tokenizer, max_len: int) -> int:
  """Position of the first piece of ``text`` equal to ``word`` (lower case), below ``max_len``.

  Raises:
    ConfigError: if the word does not occur within the first ``max_len`` pieces.
  """
  pieces = tokenizer.pieces(text)[:max_len]
  for i, piece in enumerate(pieces):
    if piece.lower() == word.lower():
      return i
  raise validation.ConfigError(f"word {word!r} is not among the first {max_len} tokens of {text!r}")


def word_contexts(
  words: Sequence[str], corpus: Sequence[str], tokenizer, max_contexts: int, seed: int
) -> list[list[str]]:
  """For each word, up to ``max_contexts`` corpus sentences containing it (as a token).

  Words that never occur get the bleached template ``"this is <word> ."`` as their one
  context, so every word has at least one.
  """
  gen = rng_lib.numpy_rng(seed, "ceat_contexts")
  index: dict[str, list[int]] = {}
  wanted = {w.lower() for w in words}
  for i, text in enumerate(corpus):
    for tok in set(tokenizer.pieces(text)):
      if tok in wanted:
        index.setdefault(tok, []).append(i)
  out = []
  for w in words:
    hits = index.get(w.lower(), [])
    if len(hits) > max_contexts:
      hits = sorted(gen.choice(hits, size=max_contexts, replace=False).tolist())
    out.append([corpus[i] for i in hits] or [f"this is {w.lower()} ."])
  return out


def ceat_from_corpus(
  model,
  params,
  tokenizer,
  word_sets: Mapping[str, Sequence[str]],
  corpus: Sequence[str],
  *,
  num_samples: int,
  max_contexts: int,
  seed: int,
  max_len: int = 32,
  batch_size: int = 64,
  representation: str = "token",
) -> CeatResult:
  """CEAT for a Model: contexts from ``corpus``, one vector per (word, context), pooled by DL.

  Args:
    model: a Model (with ``token_states`` for ``representation="token"``).
    params: its parameters.
    tokenizer: its tokenizer.
    word_sets: ``{"X", "Y", "A", "B"} -> words``.
    corpus: sentences to draw contexts from.
    num_samples: CEAT samples ``N``.
    max_contexts: contexts per word (at most).
    seed: root seed.
    max_len: static sequence length.
    batch_size: static batch size.
    representation: ``"token"`` (the word's own token state in each context, Guo & Caliskan)
      or ``"pooled"`` (the pooled encoding of the context sentence).

  Returns:
    A :class:`CeatResult`.

  Raises:
    ConfigError: on unequal target word sets or an unknown representation (before any
      encoding), or a model without ``token_states`` for ``"token"``.
  """
  validation.one_of("fairness.ceat_representation", representation, REPRESENTATIONS)
  _check_sets(word_sets["X"], word_sets["Y"], word_sets["A"], word_sets["B"])
  contexts = {}
  for k in ("X", "Y", "A", "B"):
    words = list(word_sets[k])
    per_word = word_contexts(words, corpus, tokenizer, max_contexts, seed)
    if representation == "token":  # keep contexts where the word lies within max_len
      kept = []
      for w, ctx in zip(words, per_word, strict=True):
        ok = [(t, p) for t in ctx if (p := _position_or_none(w, t, tokenizer, max_len)) is not None]
        kept.append(ok or [(f"this is {w.lower()} .", 2)])
      flat = [t for ctx in kept for t, _ in ctx]
      pos = [p for ctx in kept for _, p in ctx]
      enc = encode_token_states(model, params, tokenizer, flat, pos, max_len, batch_size)
      sizes = [len(c) for c in kept]
    else:
      flat = [t for ctx in per_word for t in ctx]
      enc = encode_texts(model, params, tokenizer, flat, max_len, batch_size)
      sizes = [len(c) for c in per_word]
    contexts[k] = np.split(enc, np.cumsum(sizes)[:-1])
  return ceat(contexts, num_samples=num_samples, seed=seed)


def _position_or_none(word: str, text: str, tokenizer, max_len: int) -> int | None:
  try:
    return word_position(word, text, tokenizer, max_len)
  except validation.ConfigError:
    return None


__all__ = [
  "CeatResult",
  "WeatResult",
  "association",
  "ceat",
  "ceat_from_corpus",
  "effect_size_and_variance",
  "encode_texts",
  "encode_token_states",
  "load_seat_test",
  "permutation_p_value",
  "random_effects",
  "seat",
  "weat",
  "word_contexts",
  "word_position",
]
