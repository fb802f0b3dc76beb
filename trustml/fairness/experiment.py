"""Library functions behind ``launch/fairness.py``: APS, bias AUCs, association tests, study.

This module orchestrates: it trains, scores with JAX, and hands the scores to the modules that
compute (:mod:`~trustml.fairness.sensitivity`, :mod:`~trustml.fairness.group_metrics` with the
HateXplain protocol, :mod:`~trustml.fairness.association`, :mod:`~trustml.fairness.study` for
the study's correlation tables); figures come from :mod:`trustml.core.plots`.

Every task trains its classifier(s) with the spine (:func:`trustml.train.loop.fit`) in a
sub-folder of the run directory (``task/``, ``protected/``; rerunning resumes from their
checkpoints), then writes ``summary.json``, ``metrics.jsonl`` and ``plots/*.png`` at the top
of the run directory. The ``fairness`` config section (see ``configs/aps.py``) selects the task.

Tasks:

* ``aps``: task classifier + protected-status classifier on the same tokenizer; APS over the
  evaluation examples, the counterfactual gap (gender swap) on the same examples, their
  per-example Pearson/Spearman correlation, per-group accuracy with bootstrap CIs.
* ``bias_auc``: HateXplain protocol bias AUCs (per community, generalized means, bootstrap CIs),
  demographic-parity and equalized-odds differences.
* ``association``: SEAT tests on the model's pooled encodings, CEAT with corpus contexts
  (each word's own token state by default, ``fairness.ceat_representation``).
* ``study``: K models (architecture/width/seed), each scored intrinsically (SEAT/CEAT) and
  extrinsically (bias AUCs, counterfactual gap, APS); Pearson and Spearman correlations across
  models in one table.
"""

import copy
import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special

from trustml.core import plots, validation
from trustml.data import batching, sources
from trustml.fairness import association, counterfactual, group_metrics, sensitivity, study
from trustml.models import registry
from trustml.train import evaluate, experiment, loop, writers

TASKS = ("aps", "bias_auc", "association", "study", "crr_distill")
FIELDS = (
  "task",
  "protected_label",
  "protected_model",
  "protected_num_epochs",
  "aps",
  "num_examples",
  "eval_split",
  "her_counterpart",
  "bootstrap_samples",
  "communities",
  "top_k",
  "threshold",
  "seat_tests",
  "ceat_test",
  "ceat_samples",
  "ceat_contexts",
  "ceat_representation",
  "study_models",
)
NORMAL_LABEL = group_metrics.HATEXPLAIN_NORMAL  # HateXplain: 0 hate, 1 normal, 2 offensive.


def validate_config(config: Any) -> None:
  """Validates the ``fairness`` section (and the spine sections) before any compute.

  Raises:
    ConfigError: naming the first invalid field.
  """
  fc = config.fairness
  validation.one_of("fairness.task", fc.task, TASKS)
  if fc.task == "crr_distill":
    return
  validation.known_fields("fairness", fc.keys(), FIELDS)
  experiment.validate_spine(config, ("fairness",))
  sensitivity.ApsOptions(**fc.aps).validate("fairness.aps")
  registry.validate_model(fc.protected_model)
  validation.positive("fairness.protected_num_epochs", fc.protected_num_epochs)
  validation.positive_int("fairness.num_examples", fc.num_examples)
  validation.positive_int("fairness.bootstrap_samples", fc.bootstrap_samples)
  validation.positive_int("fairness.top_k", fc.top_k)
  validation.in_range("fairness.threshold", fc.threshold, 0.0, 1.0)
  validation.one_of("fairness.her_counterpart", fc.her_counterpart, counterfactual.HER_COUNTERPARTS)
  validation.positive_int("fairness.ceat_samples", fc.ceat_samples)
  validation.positive_int("fairness.ceat_contexts", fc.ceat_contexts)
  validation.one_of(
    "fairness.ceat_representation",
    fc.get("ceat_representation", "token"),
    association.REPRESENTATIONS,
  )
  if fc.task in ("bias_auc", "study") and config.data.name != "hatexplain":
    raise validation.ConfigError(
      f"data.name={config.data.name!r} is invalid for fairness.task={fc.task!r}: must be 'hatexplain'"
    )
  if fc.task == "study":
    specs = study.parse_study_models(fc.study_models)
    if len(specs) < 2:
      raise validation.ConfigError("fairness.study_models is invalid: need at least 2 models")
  if fc.task in ("association", "study"):  # unknown SEAT/CEAT tests fail here, not after training
    if not fc.seat_tests:
      raise validation.ConfigError("fairness.seat_tests=() is invalid: name at least one test")
    for name in (*fc.seat_tests, *([fc.ceat_test] if fc.ceat_test else [])):
      association.load_seat_test(name, config.data.dir or None)
  if fc.task in ("bias_auc", "study") and fc.communities:
    _check_communities(config)


def _check_communities(config: Any) -> None:
  """Rejects configured HateXplain communities that no test post targets (before training)."""
  test = sources.load_dataset(config.data).split("test")
  if "groups_majority" not in test:
    raise validation.ConfigError("data.name='hatexplain' test split lacks majority targets")
  names = list(config.fairness.communities)
  member = group_metrics.membership([tuple(t) for t in test["groups_majority"]], names)
  for name, count in zip(names, member.sum(0), strict=True):
    if count == 0:
      raise validation.ConfigError(
        f"fairness.communities entry {name!r} is invalid: it is empty (no test post has it as "
        "a majority target)"
      )


# --- shared helpers -----------------------------------------------------------------------


def _train(config: Any, workdir: pathlib.Path, prepared: experiment.Prepared | None = None):
  outcome = loop.fit(config, workdir, prepared=prepared, extra_sections=("fairness",))
  return outcome.state.params, outcome.prepared, outcome.summary


def _encode(prepared: experiment.Prepared, texts: Sequence[str], labels=None) -> dict:
  cols = {"text": np.asarray(list(texts), object)}
  if labels is not None:
    cols["label"] = np.asarray(labels, np.int32)
  return batching.encode_split(cols, prepared.tokenizer, prepared.train["tokens"].shape[1])


def _probs(model, params, arrays, batch_size: int) -> np.ndarray:
  logits = evaluate.predict_logits(model, params, arrays, batch_size).astype(np.float64)
  return special.softmax(logits, axis=-1)


def _protected_setup(config: Any, prepared: experiment.Prepared):
  """Config and Prepared of the protected-status classifier (same tokenizer and max_len)."""
  fc = config.fairness
  ds = prepared.dataset
  label_col = fc.protected_label

  def labelled(split_name: str) -> dict:
    cols = ds.split(split_name)
    if label_col == "target_gender":  # HateXplain: the targeted gender (Women vs Men only).
      groups = cols["groups"]
      lab = np.array(
        [
          1 if ("Women" in g and "Men" not in g) else 0 if ("Men" in g and "Women" not in g) else -1
          for g in groups
        ]
      )
    else:
      if label_col not in cols:
        raise validation.ConfigError(
          f"fairness.protected_label={label_col!r} is invalid: split {split_name!r} has columns "
          f"{sorted(cols)}"
        )
      lab = np.asarray(cols[label_col]).astype(int)
    keep = np.flatnonzero(lab >= 0)
    if keep.size == 0:
      raise validation.ConfigError(f"fairness.protected_label={label_col!r} has no labelled rows")
    return _encode(prepared, [str(t) for t in cols["text"][keep]], lab[keep])

  train = labelled(ds.train_split)
  evals = labelled(ds.eval_split)
  model = registry.build_model(
    fc.protected_model,
    vocab_size=prepared.tokenizer.vocab_size,
    num_classes=2,
    max_len=prepared.train["tokens"].shape[1],
  )
  pcfg = copy.deepcopy(config)
  pcfg.model = fc.protected_model
  pcfg.train.num_epochs = float(fc.protected_num_epochs)
  return pcfg, dataclasses.replace(prepared, train=train, eval=evals, model=model)


def _write(workdir: pathlib.Path, config: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
  writers.write_config(workdir, config)
  writer = writers.MetricWriter(workdir, tensorboard=False)
  scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
  writer.write(int(summary.get("train/steps", 0)), "fairness", **scalars)
  writer.close()
  writers.write_summary(workdir, summary)
  return dict(summary)


def _eval_subset(config: Any, prepared: experiment.Prepared) -> dict[str, np.ndarray]:
  split = config.fairness.eval_split or prepared.dataset.eval_split
  cols = prepared.dataset.split(split)
  n = min(len(cols["text"]), int(config.fairness.num_examples))
  return {k: np.asarray(v)[:n] for k, v in cols.items()}


def counterfactual_scores(
  model,
  params,
  prepared,
  texts: Sequence[str],
  pairs: Mapping[str, str],
  batch_size: int,
  pronoun_rule: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Class probabilities on ``texts`` and on their gender-swapped counterfactuals.

  ``pronoun_rule`` swaps her/his/him/hers by the next-token rule of
  :mod:`trustml.fairness.counterfactual` (``fairness.her_counterpart="pos"``).

  Returns:
    ``(probs [N, C], cf_probs [N, C], changed [N] bool)`` where ``changed`` marks texts that
    contain at least one swappable word.
  """
  swapped = counterfactual.swap_texts(texts, pairs, pronoun_rule=pronoun_rule)
  changed = np.array([a != b for a, b in zip(texts, swapped, strict=True)])
  p = _probs(model, params, _encode(prepared, texts), batch_size)
  q = _probs(model, params, _encode(prepared, swapped), batch_size)
  return p, q, changed


def aps_and_gap(config, prepared, params, prot_model, prot_params, texts, pairs, score_fn=None):
  """Per-example APS and counterfactual gap on the texts that contain gendered words."""
  fc = config.fairness
  bs = int(config.train.eval_batch_size)
  rule = fc.her_counterpart == "pos"
  p, q, changed = counterfactual_scores(prepared.model, params, prepared, texts, pairs, bs, rule)
  if score_fn is not None:
    gap = counterfactual.counterfactual_gap(score_fn(p), score_fn(q))
  else:
    gap = counterfactual.counterfactual_gap(p, q)
  arrays = _encode(prepared, texts)
  idx = np.flatnonzero(changed)
  if idx.size == 0:
    raise validation.ConfigError("no evaluation text contains a gendered word: cannot compare")
  batches = (batching.take_padded(arrays, idx[s : s + 64], 64) for s in range(0, idx.size, 64))
  aps, per_ex = sensitivity.accumulated_prediction_sensitivity(
    prepared.model, params, prot_model, prot_params, batches, sensitivity.ApsOptions(**fc.aps)
  )
  return aps, per_ex, gap[idx], gap


# --- tasks ------------------------------------------------------------------------------------


def run_aps(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """APS vs counterfactual gap for one task classifier (see module docstring)."""
  validate_config(config)
  wd = pathlib.Path(workdir)
  params, prepared, tsum = _train(config, wd / "task")
  pcfg, pprep = _protected_setup(config, prepared)
  prot_params, _, psum = _train(pcfg, wd / "protected", pprep)
  pairs = counterfactual.load_gender_pairs(config.data.dir or None, config.fairness.her_counterpart)
  cols = _eval_subset(config, prepared)
  texts = [str(t) for t in cols["text"]]
  aps, per_ex, gap_changed, gap_all = aps_and_gap(
    config, prepared, params, pprep.model, prot_params, texts, pairs
  )
  corr = study.correlations(per_ex, gap_changed)
  summary = {
    "fairness/aps": aps,
    "fairness/counterfactual_gap": float(gap_changed.mean()),
    "fairness/counterfactual_gap_all": float(gap_all.mean()),
    "fairness/num_swapped": int(gap_changed.size),
    "fairness/aps_gap_pearson": corr["pearson"],
    "fairness/aps_gap_spearman": corr["spearman"],
    "task/eval_accuracy": tsum.get("eval/accuracy"),
    "protected/eval_accuracy": psum.get("eval/accuracy"),
    "train/steps": tsum.get("train/steps"),
  }
  lo, hi = group_metrics.bootstrap_ci(
    np.mean, [gap_changed], num_samples=config.fairness.bootstrap_samples, seed=config.seed
  )
  summary["fairness/counterfactual_gap_ci_low"] = float(lo)
  summary["fairness/counterfactual_gap_ci_high"] = float(hi)
  # Per-group accuracy on the evaluated texts (group column: the protected label if present).
  group_col = config.fairness.protected_label
  if group_col in cols and "label" in cols:
    probs = _probs(prepared.model, params, _encode(prepared, texts), config.train.eval_batch_size)
    pred = probs.argmax(-1)
    gid = np.asarray(cols[group_col]).astype(int)
    acc = group_metrics.per_group_accuracy(cols["label"], pred, gid)
    for g, a in acc.items():
      correct = (pred == cols["label"]).astype(float)[gid == g]
      lo, hi = group_metrics.bootstrap_ci(
        np.mean, [correct], num_samples=config.fairness.bootstrap_samples, seed=config.seed
      )
      summary[f"fairness/accuracy/group_{g}"] = a
      summary[f"fairness/accuracy/group_{g}_ci_low"] = float(lo)
      summary[f"fairness/accuracy/group_{g}_ci_high"] = float(hi)
    plots.bar_chart(
      wd / "plots" / "accuracy_per_group.png",
      {f"{group_col}={g}": a for g, a in acc.items()},
      xlabel=f"group ({group_col})",
      ylabel="accuracy",
      title="accuracy per group (95% bootstrap CI)",
      ci={
        f"{group_col}={g}": (
          summary[f"fairness/accuracy/group_{g}_ci_low"],
          summary[f"fairness/accuracy/group_{g}_ci_high"],
        )
        for g in acc
      },
    )
  plots.scatter_plot(
    wd / "plots" / "aps_vs_gap.png",
    per_ex,
    gap_changed,
    xlabel="prediction sensitivity PS(x)",
    ylabel="counterfactual gap |f(x) - f(x')|",
    title=f"APS vs gap (Spearman {corr['spearman']:.2f})",
  )
  return _write(wd, config, summary)


def hatexplain_eval(config, prepared, params) -> tuple[dict[str, Any], dict[str, Any]]:
  """Bias AUCs of a trained HateXplain classifier on the official test split.

  Returns:
    ``(summary, details)``; details hold per-community arrays for plots.
  """
  fc = config.fairness
  ds = prepared.dataset
  test = ds.split("test")
  if "groups_majority" not in test:
    raise validation.ConfigError("data.name='hatexplain' test split lacks majority targets")
  targets = [tuple(t) for t in test["groups_majority"]]
  if fc.communities:
    communities = list(fc.communities)
  else:  # Top-k over the splits with full annotations (test + validation).
    pool = list(targets)
    if "groups_majority" in ds.split("validation"):
      pool += [tuple(t) for t in ds.split("validation")["groups_majority"]]
    communities = group_metrics.top_communities(pool, fc.top_k)
  member = group_metrics.membership(targets, communities)
  valid = member.any(1)
  labels = (np.asarray(test["label"]) != NORMAL_LABEL).astype(int)
  arrays = _encode(prepared, [str(t) for t in test["text"]], test["label"])
  probs = _probs(prepared.model, params, arrays, int(config.train.eval_batch_size))
  scores = 1.0 - probs[:, NORMAL_LABEL]
  summary, per = group_metrics.bias_auc_report(
    labels,
    scores,
    member,
    valid,
    communities,
    threshold=fc.threshold,
    bootstrap_samples=fc.bootstrap_samples,
    seed=config.seed,
  )
  return summary, {"communities": communities, "per": per, "texts": list(test["text"])}


def run_bias_auc(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Trains a HateXplain classifier and reports its bias AUCs on the official test split."""
  validate_config(config)
  wd = pathlib.Path(workdir)
  params, prepared, tsum = _train(config, wd / "task")
  summary, details = hatexplain_eval(config, prepared, params)
  summary.update({f"task/{k}": v for k, v in tsum.items() if k.startswith(("eval/", "train/"))})
  for m in group_metrics.METHODS:
    plots.bar_chart(
      wd / "plots" / f"bias_auc_{m}.png",
      dict(zip(details["communities"], details["per"][m], strict=True)),
      xlabel="community",
      ylabel=f"{m} AUC",
      title=f"{m} AUC per community (GMB {summary[f'bias_auc/gmb_{m}']:.3f})",
      chance=0.5,
    )
  return _write(wd, config, summary)


def association_scores(config, prepared, params) -> dict[str, Any]:
  """SEAT effect sizes (each test) and CEAT on the training corpus for one model."""
  fc = config.fairness
  tok, model = prepared.tokenizer, prepared.model
  max_len = int(prepared.train["tokens"].shape[1])
  out: dict[str, Any] = {}
  for name in fc.seat_tests:
    test = association.load_seat_test(name, config.data.dir or None)
    r = association.seat(model, params, tok, test, max_len=max_len, seed=config.seed)
    out[f"association/{name}/effect_size"] = r.effect_size
    out[f"association/{name}/p_value"] = r.p_value
  first = fc.seat_tests[0]
  out["association/effect_size"] = out[f"association/{first}/effect_size"]
  out["association/p_value"] = out[f"association/{first}/p_value"]
  out["association/mean_abs_effect_size"] = float(
    np.mean([abs(out[f"association/{n}/effect_size"]) for n in fc.seat_tests])
  )
  if fc.ceat_test:
    words = association.load_seat_test(fc.ceat_test, config.data.dir or None)
    corpus = [str(t) for t in prepared.dataset.train["text"]]
    r = association.ceat_from_corpus(
      model,
      params,
      tok,
      words,
      corpus,
      num_samples=fc.ceat_samples,
      max_contexts=fc.ceat_contexts,
      seed=config.seed,
      max_len=max_len,
      representation=fc.get("ceat_representation", "token"),
    )
    out.update(
      {
        "association/ceat/effect_size": r.effect_size,
        "association/ceat/standard_error": r.standard_error,
        "association/ceat/p_value": r.p_value,
        "association/ceat/q": r.q,
        "association/ceat/tau2": r.tau2,
      }
    )
  return out


def run_association(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Trains a classifier and runs SEAT (and CEAT) on its pooled encodings."""
  validate_config(config)
  wd = pathlib.Path(workdir)
  params, prepared, tsum = _train(config, wd / "task")
  summary = association_scores(config, prepared, params)
  summary["task/eval_accuracy"] = tsum.get("eval/accuracy")
  plots.bar_chart(
    wd / "plots" / "seat_effect_sizes.png",
    {n: summary[f"association/{n}/effect_size"] for n in config.fairness.seat_tests},
    xlabel="SEAT test",
    ylabel="effect size d",
    title="SEAT effect size per test",
    chance=0.0,
  )
  return _write(wd, config, summary)


# --- intrinsic vs extrinsic study -------------------------------------------------------------


def run_study(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Trains K models and correlates intrinsic with extrinsic bias scores across them."""
  validate_config(config)
  wd = pathlib.Path(workdir)
  specs = study.parse_study_models(config.fairness.study_models)
  prepared = experiment.prepare(config, wd)
  pcfg, pprep = _protected_setup(config, prepared)
  prot_params, _, _ = _train(pcfg, wd / "protected", pprep)
  pairs = counterfactual.load_gender_pairs(config.data.dir or None, config.fairness.her_counterpart)
  test_texts = [str(t) for t in prepared.dataset.split("test")["text"]]
  rows = []
  rows_path = wd / "study_rows.jsonl"
  rows_path.write_text("")
  for m in specs:
    cfg = copy.deepcopy(config)
    cfg.seed = m.seed
    cfg.model = study.study_model_config(m)
    model = registry.build_model(
      cfg.model,
      vocab_size=prepared.tokenizer.vocab_size,
      num_classes=prepared.dataset.num_classes,
      max_len=prepared.train["tokens"].shape[1],
    )
    params, mprep, tsum = _train(
      cfg, wd / "models" / m.name, dataclasses.replace(prepared, model=model)
    )
    row = {"model": m.name, "eval/accuracy": tsum.get("eval/accuracy")}
    row.update(association_scores(cfg, mprep, params))
    row.update(hatexplain_eval(cfg, mprep, params)[0])
    aps, per_ex, gap, _ = aps_and_gap(
      cfg,
      mprep,
      params,
      pprep.model,
      prot_params,
      test_texts,
      pairs,
      score_fn=lambda p: 1.0 - p[:, NORMAL_LABEL],
    )
    row["fairness/aps"] = aps
    row["fairness/counterfactual_gap"] = float(gap.mean())
    row["fairness/aps_gap_spearman"] = study.correlations(per_ex, gap)["spearman"]  # Per example.
    rows.append(row)
    with rows_path.open("a") as f:
      f.write(json.dumps(row, default=float) + "\n")
  summary, table = study.correlation_tables(rows)
  (wd / "study_table.md").write_text(table)
  plots.bar_chart(
    wd / "plots" / "study_gmb_subgroup.png",
    {r["model"]: r["bias_auc/gmb_subgroup"] for r in rows},
    xlabel="model",
    ylabel="GMB subgroup AUC",
    title="GMB subgroup AUC per model (95% bootstrap CI)",
    ci={
      r["model"]: (r["bias_auc/gmb_subgroup_ci_low"], r["bias_auc/gmb_subgroup_ci_high"])
      for r in rows
    },
    chance=0.5,
  )
  return _write(wd, config, summary)


def run(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Dispatches on ``config.fairness.task`` (the function ``launch/fairness.py`` calls).

  Raises:
    ConfigError: on an invalid config, before any compute.
  """
  task = config.fairness.task if "fairness" in config else None
  validation.one_of("fairness.task", task, TASKS)
  if task == "crr_distill":
    from trustml.fairness import crr  # noqa: PLC0415  (imported only when used)

    return crr.run(config, workdir)
  fn = {
    "aps": run_aps,
    "bias_auc": run_bias_auc,
    "association": run_association,
    "study": run_study,
  }[task]
  return fn(config, workdir)


# Re-exported from :mod:`trustml.fairness.study`.
EXTRINSIC, INTRINSIC = study.EXTRINSIC, study.INTRINSIC
StudyModel, parse_study_models = study.StudyModel, study.parse_study_models

__all__ = [
  "EXTRINSIC",
  "INTRINSIC",
  "TASKS",
  "StudyModel",
  "aps_and_gap",
  "association_scores",
  "counterfactual_scores",
  "hatexplain_eval",
  "parse_study_models",
  "run",
  "run_aps",
  "run_association",
  "run_bias_auc",
  "run_study",
  "validate_config",
]
