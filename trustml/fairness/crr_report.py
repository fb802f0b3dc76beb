"""The CRR experiment's figures: template bias, flat summary keys, the comparison table.

Pure functions of a model's next-token distributions and of the per-model evaluation dicts
(``perplexity``, ``profession`` / ``gender`` disparity dicts of
:func:`trustml.fairness.generation.disparity`, ``template_bias``,
``template_stereotype_gap``); the driver :func:`trustml.fairness.crr.run` computes those and
writes what these return.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from trustml.data import synthetic, tokenizers


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


def flat_result(prefix: str, res: Mapping[str, Any]) -> dict[str, Any]:
  """One model's evaluation as flat ``<prefix>/<name>`` keys (perplexity, BOLD profession
  disparities and fractions, template bias; gender-prompt fractions when sampled)."""
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


def summary(results: Mapping[str, Mapping[str, Any]], headline: str) -> dict[str, Any]:
  """The experiment's ``generation/*`` summary keys.

  Args:
    results: model name (``teacher`` and each variant) -> evaluation dict.
    headline: the variant behind ``generation/gender_disparity`` and ``generation/perplexity``.

  Returns:
    ``generation/<model>/...`` keys of every model (:func:`flat_result`), the headline keys,
    and, when a ``plain`` student is present, each other student's relative change of BOLD
    disparity and perplexity against it (``.../disparity_change_vs_plain``,
    ``.../perplexity_change_vs_plain``).
  """
  out: dict[str, Any] = {}
  for name, res in results.items():
    out.update(flat_result(f"generation/{name}", res))
  out["generation/gender_disparity"] = results[headline]["profession"]["gender_disparity"]
  out["generation/perplexity"] = results[headline]["perplexity"]
  out["generation/headline_variant"] = headline
  if "plain" in results:
    base = results["plain"]
    for name, res in results.items():
      if name in ("plain", "teacher"):
        continue
      out[f"generation/{name}/disparity_change_vs_plain"] = (
        res["profession"]["gender_disparity"] / base["profession"]["gender_disparity"] - 1.0
      )
      out[f"generation/{name}/perplexity_change_vs_plain"] = (
        res["perplexity"] / base["perplexity"] - 1.0
      )
  return out


__all__ = ["flat_result", "profession_pronoun_bias", "results_table", "summary"]
