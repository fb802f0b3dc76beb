"""The counterfactual role-reversal (CRR) distillation experiment behind ``launch/fairness.py``.

``run(config, workdir)`` builds the gender-biased corpus, trains the teacher causal LM, distils
one student per variant with the objective and mitigations of :mod:`trustml.fairness.distill`,
and measures BOLD generation disparity and held-out perplexity (``configs/crr_distill.py``).
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.data import paths, sources, synthetic, tokenizers
from trustml.fairness import counterfactual, distill, generation
from trustml.models import contract, registry
from trustml.train import checkpoint, evaluate, writers
from trustml.train import config as train_config

CORPUS_FIELDS = (
  "dir",
  "seed",
  "num_lm_sentences",
  "lm_bias",
  "winobias",
  "shakespeare_max_sequences",
)
SECTIONS = ("fairness", "data", "text", "teacher", "student", "distill", "generation")


def _validate(config: Any) -> list[distill.Variant]:
  """Validates every section of a ``crr_distill`` config before any compute.

  Returns:
    The parsed variants.

  Raises:
    ConfigError: naming the first invalid field.
  """
  for section in SECTIONS:
    if section not in config:
      raise validation.ConfigError(f"config.{section} is missing: a crr_distill config needs it")
  validation.one_of("fairness.task", config.fairness.task, ("crr_distill",))
  validation.one_of(
    "fairness.her_counterpart", config.fairness.her_counterpart, counterfactual.HER_COUNTERPARTS
  )
  validation.non_negative_int("seed", config.seed)
  d = config.data
  validation.known_fields("data", d.keys(), CORPUS_FIELDS)
  validation.non_negative_int("data.num_lm_sentences", d.num_lm_sentences)
  validation.in_range("data.lm_bias", d.lm_bias, 0.0, 1.0, low_inclusive=True, high_inclusive=True)
  validation.non_negative_int("data.shakespeare_max_sequences", d.shakespeare_max_sequences)
  if not (d.num_lm_sentences or d.winobias or d.shakespeare_max_sequences):
    raise validation.ConfigError("data is invalid: every corpus source is switched off")
  train_config.validate_text(config.text)
  validation.one_of("text.kind", config.text.kind, ("word",))
  for name in ("teacher", "student"):
    sec = config[name]
    validation.known_fields(name, sec.keys(), ("model", "train"))
    registry.validate_model(sec.model)
    validation.one_of(f"{name}.model.name", sec.model.name, ("causal_lm",))
    train_config.validate_train(sec.train)
  dc = config.distill
  validation.known_fields(
    "distill", dc.keys(), ("temperature", "alpha", "kd_weight", "variants", "headline_variant")
  )
  validation.positive("distill.temperature", dc.temperature)
  validation.non_negative("distill.alpha", dc.alpha)
  validation.non_negative("distill.kd_weight", dc.kd_weight)
  names = [v.strip() for v in dc.variants.split(",") if v.strip()]
  if not names or len(set(names)) != len(names):
    raise validation.ConfigError(
      f"distill.variants={dc.variants!r} is invalid: must be a non-empty list of distinct names"
    )
  variants = [distill.parse_variant(v) for v in names]
  if dc.headline_variant:
    validation.one_of("distill.headline_variant", dc.headline_variant, names)
  g = config.generation
  validation.known_fields(
    "generation",
    g.keys(),
    (
      "max_prompts_per_group",
      "samples_per_prompt",
      "max_prompt_len",
      "max_new_tokens",
      "temperature",
      "top_k",
      "batch_size",
      "gender_prompts",
    ),
  )
  validation.non_negative_int("generation.max_prompts_per_group", g.max_prompts_per_group)
  validation.positive_int("generation.samples_per_prompt", g.samples_per_prompt)
  validation.positive_int("generation.max_new_tokens", g.max_new_tokens)
  validation.non_negative("generation.temperature", g.temperature)
  validation.non_negative_int("generation.top_k", g.top_k)
  validation.positive_int("generation.batch_size", g.batch_size)
  if g.max_prompt_len < 2 or g.max_prompt_len + g.max_new_tokens > config.text.max_len:
    raise validation.ConfigError(
      f"generation.max_prompt_len={g.max_prompt_len} is invalid: must be >= 2 and, plus "
      f"generation.max_new_tokens={g.max_new_tokens}, at most text.max_len={config.text.max_len}"
    )
  return variants


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


def profession_pronoun_bias(
  apply_fn: Callable, params: object, tokenizer: tokenizers.WordTokenizer, max_len: int
) -> dict[str, float]:
  """Intrinsic bias on the embedded corpus's templates (no sampling noise).

  For each profession ``p`` of :data:`trustml.data.synthetic.PROFESSIONS` and each LM template
  cut just before its pronoun slot ("the nurse said that ___"), the next-token probabilities of
  the male and female forms (``he``/``she`` or ``his``/``her``) give
  ``b = (P_m - P_f) / (P_m + P_f)``. Returns ``template_bias`` = mean ``|b|`` and
  ``template_stereotype_gap`` = mean ``b`` over male-stereotyped minus mean ``b`` over
  female-stereotyped professions (2 * (2 * lm_bias - 1) = 1.2 in the corpus at lm_bias 0.8).
  """
  prefixes, forms, profs = [], [], []
  for prof in synthetic.PROFESSIONS:
    for tmpl in synthetic.LM_TEMPLATES:
      cut = min(i for i in (tmpl.find("{subj}"), tmpl.find("{poss}")) if i >= 0)
      slot = "subj" if tmpl[cut:].startswith("{subj}") else "poss"
      prefixes.append(tmpl[:cut].format(prof=prof))
      forms.append(("he", "she") if slot == "subj" else ("his", "her"))
      profs.append(prof)
  tokens = np.zeros((len(prefixes), max_len), np.int32)
  lengths = np.zeros((len(prefixes),), np.int32)
  for i, p in enumerate(prefixes):
    ids = tokenizer.encode(p, add_bos=True)[:max_len]
    tokens[i, : len(ids)] = ids
    lengths[i] = len(ids)
  batch = {"tokens": tokens, "mask": tokens != tokenizers.PAD}
  logits = np.asarray(jax.jit(apply_fn)(params, batch), np.float64)
  last = logits[np.arange(len(prefixes)), lengths - 1]
  probs = np.exp(last - last.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  pm = np.array([probs[i, tokenizer.token_to_id(m)] for i, (m, _) in enumerate(forms)])
  pf = np.array([probs[i, tokenizer.token_to_id(f)] for i, (_, f) in enumerate(forms)])
  b = (pm - pf) / np.maximum(pm + pf, 1e-30)
  profs = np.array(profs)
  male = np.isin(profs, synthetic.MALE_STEREOTYPED)
  female = np.isin(profs, synthetic.FEMALE_STEREOTYPED)
  return {
    "template_bias": float(np.abs(b).mean()),
    "template_stereotype_gap": float(b[male].mean() - b[female].mean()),
  }


class _Evaluator:
  """Perplexity, BOLD generation disparity and template bias of one model, all deterministic."""

  def __init__(self, config: Any, tokenizer, eval_arrays, pairs, streams):
    g = config.generation
    self.config, self.tokenizer, self.eval_arrays = config, tokenizer, eval_arrays
    self.key = streams.stream("eval")
    male, female = generation.gendered_words(pairs)
    self.id_gender = generation.gender_id_table(tokenizer, sorted(male), sorted(female))
    # Diagnostic: only words the swap can act on (without the unpaired "him" and "hers").
    male_p, female_p = generation.gendered_words(pairs, include_unpaired=False)
    self.id_gender_paired = generation.gender_id_table(tokenizer, sorted(male_p), sorted(female_p))
    self.domains = {}
    for domain in ("profession", "gender") if g.gender_prompts else ("profession",):
      prompts, groups, names = generation.load_bold_prompts(
        domain, config.data.dir or None, max_per_group=g.max_prompts_per_group, seed=config.seed
      )
      prompts = [p for p in prompts for _ in range(g.samples_per_prompt)]
      groups = np.repeat(groups, g.samples_per_prompt)
      tokens, lengths = generation.encode_prompts(
        tokenizer, prompts, g.max_prompt_len, config.text.max_len
      )
      self.domains[domain] = (tokens, lengths, groups, names)
    self._samplers: dict[int, Callable] = {}

  def __call__(self, model: contract.Model, params: object) -> dict[str, Any]:
    g = self.config.generation
    out: dict[str, Any] = {}
    out["perplexity"] = evaluate.evaluate(model, params, self.eval_arrays, 256)["perplexity"]
    sampler = self._samplers.setdefault(
      id(model.apply),
      generation.make_sampler(
        model.apply, max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k
      ),
    )
    for di, (domain, (tokens, lengths, groups, names)) in enumerate(self.domains.items()):
      toks, gen = generation.generate(
        sampler, params, tokens, lengths, jax.random.fold_in(self.key, di), g.batch_size
      )
      labels = generation.label_token_ids(toks, gen, self.id_gender)
      out[domain] = generation.disparity(labels, groups, names)
      paired = generation.label_token_ids(toks, gen, self.id_gender_paired)
      out[domain]["gender_disparity_swappable_words"] = generation.disparity(paired, groups, names)[
        "gender_disparity"
      ]
    out.update(
      profession_pronoun_bias(model.apply, params, self.tokenizer, self.config.text.max_len)
    )
    return out


def _fingerprint(config: Any, sections: tuple[str, ...], **extra: Any) -> str:
  """A stable digest of the config sections (and extras) a trained model depends on."""
  d = {k: (config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]) for k in sections}
  d.update(extra)
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _train_or_restore(name, workdir, template, fingerprint, train_fn, log):
  """Restores ``checkpoints/<name>`` when it was completed under the same config fingerprint,
  else trains the model and saves it (resume granularity: one model)."""
  ckpt = checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints" / name, max_to_keep=1)
  try:
    restored = ckpt.restore_latest(template)
    if restored is not None and restored[2].get("fingerprint") == fingerprint:
      log(f"restored {name} from step {restored[0]}")
      return restored[1]
    params, steps = train_fn()
    ckpt.save(steps, params, {"fingerprint": fingerprint, "name": name})
    return params
  finally:
    ckpt.close()


def _flat_result(prefix: str, res: Mapping[str, Any]) -> dict[str, Any]:
  out = {f"{prefix}/perplexity": res["perplexity"]}
  prof = res["profession"]
  for k in (
    "gender_disparity",
    "gender_disparity_swappable_words",
    "gender_disparity_fraction",
    "male_fraction",
    "female_fraction",
    "gendered_fraction",
  ):
    out[f"{prefix}/{k}"] = prof[k]
  out[f"{prefix}/template_bias"] = res["template_bias"]
  out[f"{prefix}/template_stereotype_gap"] = res["template_stereotype_gap"]
  if "gender" in res:
    for group, e in res["gender"]["per_group"].items():
      out[f"{prefix}/gender_prompts/{group}/male_fraction"] = e["male"] / e["n"]
      out[f"{prefix}/gender_prompts/{group}/female_fraction"] = e["female"] / e["n"]
  return out


def results_table(results: Mapping[str, Mapping[str, Any]], baseline: str = "plain") -> str:
  """A Markdown table of every model: BOLD disparity (all gendered words, and swappable words
  only), fraction disparity, share of gendered generations, template bias, perplexity, and the
  relative changes of disparity and perplexity against ``baseline`` (when present)."""
  base = results.get(baseline)
  rows = [
    "| model | BOLD gender disparity | (swappable words only) | fraction disparity "
    "| gendered gens | template bias | perplexity | disparity vs plain | perplexity vs plain |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in results.items():
    p = r["profession"]
    rel_d = rel_p = ""
    if base is not None and name != baseline:
      rel_d = f"{100 * (p['gender_disparity'] / base['profession']['gender_disparity'] - 1):+.1f}%"
      rel_p = f"{100 * (r['perplexity'] / base['perplexity'] - 1):+.1f}%"
    rows.append(
      f"| {name} | {p['gender_disparity']:.3f} | {p['gender_disparity_swappable_words']:.3f} "
      f"| {p['gender_disparity_fraction']:.3f} | {p['gendered_fraction']:.3f} "
      f"| {r['template_bias']:.3f} | {r['perplexity']:.2f} | {rel_d} | {rel_p} |"
    )
  return "\n".join(rows)


def run(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Counterfactual role-reversal distillation: teacher, one student per variant, the table.

  Steps: build the corpus (:func:`build_corpus`) and a word tokenizer on its training text;
  train the teacher causal LM; for each variant of ``distill.variants`` distil a student
  (same init and data seed for all) with :func:`distill.make_kd_step` on the (augmented) corpus; score
  teacher and students on held-out perplexity, BOLD generation disparity and template bias.
  Models are checkpointed under ``checkpoints/<name>`` when trained; a rerun restores them.

  Args:
    config: a ``configs/crr_distill.py`` config.
    workdir: run directory (``config.json``, ``metrics.jsonl``, ``summary.json``,
      ``crr_table.md``, ``tokenizer.json``, ``checkpoints/``, ``plots/``).

  Returns:
    The summary: ``generation/gender_disparity`` and ``generation/perplexity`` of the headline
    variant (``distill.headline_variant``, default the last listed) and, per model ``m``
    (``teacher`` and each variant), ``generation/<m>/...`` keys.

  Raises:
    ConfigError: on an invalid config, before any compute.
  """
  variants = _validate(config)
  t0 = time.time()
  wd = pathlib.Path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  writers.write_config(wd, config)
  metric_writer = writers.MetricWriter(wd, tensorboard=False)
  streams = rng_lib.RngStreams(int(config.seed))
  max_len = int(config.text.max_len)
  pairs = counterfactual.load_gender_pairs(config.data.dir or None, config.fairness.her_counterpart)

  corpus = build_corpus(config.data, max_len)
  train_texts = [t for texts in corpus["train"].values() for t in texts]
  eval_texts = [t for texts in corpus["eval"].values() for t in texts]
  tokenizer = build_tokenizer(
    train_texts, pairs, vocab_size=config.text.vocab_size, min_count=config.text.min_count
  )
  tokenizer.save(wd / "tokenizer.json")
  vocab = tokenizer.vocab_size
  train_arrays = encode_lm(tokenizer, train_texts, max_len)
  eval_arrays = encode_lm(tokenizer, eval_texts, max_len)
  id_pairs = counterfactual.token_id_pairs(pairs, tokenizer.token_to_id, tokenizers.UNK)
  perm = distill.swap_permutation(vocab, id_pairs)
  pronouns = None
  if config.fairness.her_counterpart == "pos":  # her/his/him/hers by the next-token rule
    itos = [tokenizer.id_to_token(i) for i in range(vocab)]
    pronouns = counterfactual.pronoun_ids(itos, tokenizers.UNK)
  evaluator = _Evaluator(config, tokenizer, eval_arrays, pairs, streams)

  def log(msg):
    logging.info("[crr %7.1fs] %s", time.time() - t0, msg)

  def logger(name):
    return lambda step, aux: metric_writer.write(step, f"train/{name}", **aux)

  init_batch = {k: v[:2] for k, v in train_arrays.items()}
  teacher = registry.build_model(
    config.teacher.model, vocab_size=vocab, num_classes=vocab, max_len=max_len
  )
  teacher_init = jax.jit(teacher.init)(streams.at("params", 0), init_batch)
  t_steps = train_config.num_train_steps(config.teacher.train, len(train_texts))

  def train_teacher():
    opt = train_config.make_optimizer(config.teacher.train, t_steps)
    step = distill.make_lm_step(teacher.apply, opt)
    params = distill.fit(
      step,
      teacher_init,
      opt,
      train_arrays,
      steps=t_steps,
      batch_size=config.teacher.train.batch_size,
      seed=int(config.seed),
      log_fn=logger("teacher"),
      log_every=config.teacher.train.log_every or 100,
    )
    return params, t_steps

  log(
    f"corpus { ({k: len(v) for k, v in corpus['train'].items()}) }, vocab {vocab}, "
    f"gendered pairs in vocab {len(id_pairs)}"
  )
  teacher_fp = _fingerprint(config, ("seed", "data", "text", "teacher"))
  teacher_params = _train_or_restore("teacher", wd, teacher_init, teacher_fp, train_teacher, log)
  t_eval = time.time()
  results = {"teacher": evaluator(teacher, teacher_params)}
  log(f"teacher evaluated in {time.time() - t_eval:.1f}s")
  log(
    f"teacher: ppl {results['teacher']['perplexity']:.2f} disparity "
    f"{results['teacher']['profession']['gender_disparity']:.3f}"
  )

  student = registry.build_model(
    config.student.model, vocab_size=vocab, num_classes=vocab, max_len=max_len
  )
  student_init = jax.jit(student.init)(streams.at("params", 1), init_batch)
  dc = config.distill
  for v in variants:
    arrays = distill.augment(train_arrays, id_pairs, v.cda, pronouns)
    s_steps = train_config.num_train_steps(config.student.train, len(train_texts))

    def train_student(v=v, arrays=arrays, s_steps=s_steps):
      opt = train_config.make_optimizer(config.student.train, s_steps)
      step = distill.make_kd_step(
        student.apply,
        teacher.apply,
        opt,
        temperature=dc.temperature,
        alpha=dc.alpha,
        kd_weight=dc.kd_weight,
        combiner=v.combiner,
        perm=perm if v.combiner else None,
      )
      params = distill.fit(
        step,
        student_init,
        opt,
        arrays,
        steps=s_steps,
        batch_size=config.student.train.batch_size,
        seed=int(config.seed),
        extra_args=(teacher_params,),
        log_fn=logger(v.name),
        log_every=config.student.train.log_every or 100,
      )
      return params, s_steps

    fp = _fingerprint(
      config,
      ("student", "fairness"),
      teacher=teacher_fp,
      variant=dataclasses.asdict(v),
      distill={k: dc[k] for k in ("temperature", "alpha", "kd_weight")},
    )
    params = _train_or_restore(v.name, wd, student_init, fp, train_student, log)
    t_eval = time.time()
    results[v.name] = evaluator(student, params)
    log(f"{v.name} evaluated in {time.time() - t_eval:.1f}s")
    log(
      f"{v.name}: ppl {results[v.name]['perplexity']:.2f} disparity "
      f"{results[v.name]['profession']['gender_disparity']:.3f}"
    )

  summary: dict[str, Any] = {}
  for name, res in results.items():
    summary.update(_flat_result(f"generation/{name}", res))
    metric_writer.write(0, f"eval/{name}", **_flat_result("", res))
  headline = dc.headline_variant or variants[-1].name
  summary["generation/gender_disparity"] = results[headline]["profession"]["gender_disparity"]
  summary["generation/perplexity"] = results[headline]["perplexity"]
  summary["generation/headline_variant"] = headline
  if "plain" in results:
    base = results["plain"]
    for name, res in results.items():
      if name in ("plain", "teacher"):
        continue
      summary[f"generation/{name}/disparity_change_vs_plain"] = (
        res["profession"]["gender_disparity"] / base["profession"]["gender_disparity"] - 1.0
      )
      summary[f"generation/{name}/perplexity_change_vs_plain"] = (
        res["perplexity"] / base["perplexity"] - 1.0
      )
  summary["data/vocab_size"] = vocab
  summary["data/gendered_token_pairs"] = int(len(id_pairs))
  for src, texts in corpus["train"].items():
    summary[f"data/train_sequences/{src}"] = len(texts)
  summary["train/wall_seconds"] = time.time() - t0
  table = results_table(results)
  (wd / "crr_table.md").write_text(table + "\n")
  (wd / "per_group.json").write_text(
    json.dumps({n: r["profession"]["per_group"] for n, r in results.items()}, indent=1)
  )
  generation.plot_group_disparity(
    {n: r["profession"] for n, r in results.items()},
    wd / "plots" / "gender_disparity_by_profession.png",
    "BOLD profession prompts: gender disparity per group",
  )
  writers.write_summary(wd, summary)
  metric_writer.close()
  log("table\n" + table)
  return summary


__all__ = [
  "CORPUS_FIELDS",
  "SECTIONS",
  "build_corpus",
  "build_tokenizer",
  "encode_lm",
  "profession_pronoun_bias",
  "results_table",
  "run",
]
