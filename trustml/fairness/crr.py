"""The counterfactual role-reversal (CRR) distillation experiment behind ``launch/fairness.py``.

``run(config, workdir)`` is a driver: it validates the config, builds the gender-biased corpus
(:mod:`trustml.fairness.lm_corpus`), trains the teacher and distils one student per variant
through the spine loop (:mod:`trustml.fairness.distill_loop`, objectives in
:mod:`trustml.fairness.distill`), measures BOLD generation disparity, held-out perplexity and
template bias (:mod:`trustml.fairness.generation`, :mod:`trustml.fairness.crr_report`), and
writes the run contract (``configs/crr_distill.py``).
"""

import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.data import tokenizers
from trustml.fairness import (
  counterfactual,
  crr_report,
  distill,
  distill_loop,
  generation,
  lm_corpus,
)
from trustml.models import contract, registry
from trustml.train import config as train_config
from trustml.train import evaluate, parallel, writers

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
  validation.known_fields("data", d.keys(), lm_corpus.CORPUS_FIELDS)
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
  if "mesh" in config:
    train_config.validate_mesh(config.mesh)
  shards = parallel.DataParallel.from_config(config).num_shards
  for name in ("teacher", "student"):  # Rows split over the data shards: before any compute.
    if int(config[name].train.batch_size) % shards:
      raise validation.ConfigError(
        f"{name}.train.batch_size={config[name].train.batch_size} is invalid: must be a "
        f"multiple of the {shards} data shards (mesh.num_devices / mesh.model)"
      )
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

  def __call__(
    self, model: contract.Model, params: object, perplexity: float | None = None
  ) -> dict[str, Any]:
    """Scores one model; ``perplexity`` on the held-out arrays when already measured (the
    loop's final evaluation of the same arrays), else computed here."""
    g = self.config.generation
    out: dict[str, Any] = {}
    if perplexity is None:
      perplexity = evaluate.evaluate(model, params, self.eval_arrays, 256)["perplexity"]
    out["perplexity"] = float(perplexity)
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
      crr_report.profession_pronoun_bias(
        model.apply, params, self.tokenizer, self.config.text.max_len
      )
    )
    return out


def run(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Counterfactual role-reversal distillation: teacher, one student per variant, the table.

  Steps: build the corpus (:func:`trustml.fairness.lm_corpus.build_corpus`) and a word
  tokenizer on its training text; train the teacher causal LM; for each variant of
  ``distill.variants`` distil a student (same init and data order for all) on the (augmented)
  corpus; score teacher and students on held-out perplexity, BOLD generation disparity and
  template bias. Every model trains through the spine loop in its own folder
  (:mod:`trustml.fairness.distill_loop`: ``teacher/``, ``students/<variant>/``, each with
  checkpoints, metrics and TensorBoard events); a rerun resumes or restores them.

  Args:
    config: a ``configs/crr_distill.py`` config.
    workdir: run directory (``config.json``, ``metrics.jsonl``, ``summary.json``,
      ``crr_table.md``, ``per_group.json``, ``tokenizer.json``, ``plots/``, the model folders).

  Returns:
    The summary: ``generation/gender_disparity`` and ``generation/perplexity`` of the headline
    variant (``distill.headline_variant``, default the last listed) and, per model ``m``
    (``teacher`` and each variant), ``generation/<m>/...`` keys.

  Raises:
    ConfigError: on an invalid config, or a model folder holding another run, before any
      compute.
  """
  variants = _validate(config)
  wd = pathlib.Path(workdir)
  distill_loop.check_workdirs(config, wd, variants)
  t0 = time.time()
  wd.mkdir(parents=True, exist_ok=True)
  writers.write_config(wd, config)
  metric_writer = writers.MetricWriter(wd, tensorboard=False)
  streams = rng_lib.RngStreams(int(config.seed))
  max_len = int(config.text.max_len)
  pairs = counterfactual.load_gender_pairs(config.data.dir or None, config.fairness.her_counterpart)

  corpus = lm_corpus.build_corpus(config.data, max_len)
  texts = lm_corpus.as_dataset(corpus)
  train_texts = [str(t) for t in texts.split("train")["text"]]
  tokenizer = lm_corpus.build_tokenizer(
    train_texts, pairs, vocab_size=config.text.vocab_size, min_count=config.text.min_count
  )
  tokenizer.save(wd / "tokenizer.json")
  vocab = tokenizer.vocab_size
  train_arrays = lm_corpus.encode_lm(tokenizer, train_texts, max_len)
  eval_arrays = lm_corpus.encode_lm(
    tokenizer, [str(t) for t in texts.split("test")["text"]], max_len
  )
  id_pairs = counterfactual.token_id_pairs(pairs, tokenizer.token_to_id, tokenizers.UNK)
  perm = distill.swap_permutation(vocab, id_pairs)
  pronouns = None
  if config.fairness.her_counterpart == "pos":  # her/his/him/hers by the next-token rule
    itos = [tokenizer.id_to_token(i) for i in range(vocab)]
    pronouns = counterfactual.pronoun_ids(itos, tokenizers.UNK)
  evaluator = _Evaluator(config, tokenizer, eval_arrays, pairs, streams)
  logging.info(
    "crr: corpus %s, vocab %d, gendered pairs in vocab %d",
    {k: len(v) for k, v in corpus["train"].items()},
    vocab,
    len(id_pairs),
  )

  def build(role: str) -> contract.Model:
    return registry.build_model(
      config[role].model, vocab_size=vocab, num_classes=vocab, max_len=max_len
    )

  def evaluate_model(name: str, model: contract.Model, outcome: Any) -> None:
    t_eval = time.time()
    perplexity = outcome.summary.get("eval/perplexity")  # The loop's eval of eval_arrays.
    results[name] = evaluator(model, outcome.state.params, perplexity)
    logging.info(
      "crr: %s ppl %.2f disparity %.3f (evaluated in %.1fs)",
      name,
      results[name]["perplexity"],
      results[name]["profession"]["gender_disparity"],
      time.time() - t_eval,
    )

  teacher = build("teacher")
  bundle = distill_loop.prepared(texts, tokenizer, train_arrays, eval_arrays, teacher)
  teacher_run = distill_loop.train_teacher(config, wd, bundle)
  teacher_params = teacher_run.state.params
  results: dict[str, Any] = {}
  evaluate_model("teacher", teacher, teacher_run)

  student = build("student")
  init = distill_loop.student_init(config, student, {k: v[:2] for k, v in train_arrays.items()})
  for v in variants:
    arrays = distill.augment(train_arrays, id_pairs, v.cda, pronouns)
    bundle = distill_loop.prepared(texts, tokenizer, arrays, eval_arrays, student)
    outcome = distill_loop.distil_student(
      config,
      wd,
      bundle,
      teacher,
      teacher_params,
      v,
      perm,
      num_sequences=len(train_texts),
      init_params=init,
    )
    evaluate_model(v.name, student, outcome)

  headline = config.distill.headline_variant or variants[-1].name
  summary = crr_report.summary(results, headline)
  for name, res in results.items():
    metric_writer.write(0, f"eval/{name}", **crr_report.flat_result("", res))
  summary["data/vocab_size"] = vocab
  summary["data/gendered_token_pairs"] = int(len(id_pairs))
  for src, src_texts in corpus["train"].items():
    summary[f"data/train_sequences/{src}"] = len(src_texts)
  summary["train/wall_seconds"] = time.time() - t0
  table = crr_report.results_table(results)
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
  logging.info("crr: table\n%s", table)
  return summary


# Re-exported from the pure modules (the driver's former home of these functions).
CORPUS_FIELDS = lm_corpus.CORPUS_FIELDS
build_corpus, build_tokenizer, encode_lm = (
  lm_corpus.build_corpus,
  lm_corpus.build_tokenizer,
  lm_corpus.encode_lm,
)
profession_pronoun_bias, results_table = (
  crr_report.profession_pronoun_bias,
  crr_report.results_table,
)

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
