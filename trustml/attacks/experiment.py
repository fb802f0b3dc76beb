"""Train-then-attack and attack-a-workdir: the library behind ``launch/attack.py``.

A run (``config`` with the spine sections, ``privacy``, ``canaries`` and ``attack``):

1. loads the dataset, draws the canaries (:mod:`trustml.data.canaries`) and inserts them into
   the training split; builds the tokenizer on that split and checks every canary token is in
   the vocabulary (``ConfigError`` before any training);
2. trains, non-privately (:func:`trustml.train.loop.fit`) or with the privacy engine
   (:func:`trustml.privacy.training.build` plugged into the same loop), resuming from the
   workdir's checkpoints;
3. attacks: canary membership inference on the audit canaries (log-odds = loss-threshold
   attack, or LiRA with ``attack.num_shadow_models >= 2`` vmapped shadows), the one-run audit,
   a loss-threshold MIA on real train vs held-out examples, exact exposure of every secret
   canary over its whole secret space, and ModIvA extraction of every secret;
4. writes ``summary.json`` (training keys plus the attack keys), ``metrics.jsonl`` and
   ``plots/roc.png``.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from trustml.attacks import audit, exposure, extraction, lira, metrics, shadow
from trustml.core import rng as rng_lib
from trustml.core import validation
from trustml.data import batching, canaries, tokenizers
from trustml.models import registry
from trustml.train import checkpoint, experiment, loop, writers
from trustml.train import config as train_config

ATTACK_FIELDS = dict(
  fprs=(0.001, 0.01),
  num_shadow_models=0,
  lira_variant="online",
  shadow_num_steps=0,
  audit_confidence=0.95,
  audit_guess_fraction=0.1,
  extraction_candidates="digits",
  extraction_restarts=64,
  extraction_steps=200,
  extraction_learning_rate=0.1,
  extraction_refine_sweeps=2,
  exposure_chunk_size=1024,
  num_real_examples=1000,
)
CANARY_FIELDS = dict(
  num_secret=4, secret_length=4, repeats=10, label=-1, num_audit=256, audit_length=6, seed=0
)


def _extraction_config(cfg: Mapping[str, Any]) -> extraction.ExtractionConfig:
  """The ModIvA settings of an ``attack`` section (older configs lack the refinement field)."""
  return extraction.ExtractionConfig(
    num_restarts=cfg["extraction_restarts"],
    num_steps=cfg["extraction_steps"],
    learning_rate=cfg["extraction_learning_rate"],
    refine_sweeps=cfg.get("extraction_refine_sweeps", ATTACK_FIELDS["extraction_refine_sweeps"]),
  )


def validate_attack(cfg: Mapping[str, Any], num_audit: int) -> None:
  """Validates the ``attack`` section before any compute.

  Raises:
    ConfigError: naming the first invalid field.
  """
  validation.known_fields("attack", cfg.keys(), ATTACK_FIELDS)
  for f in cfg["fprs"]:
    validation.in_range("attack.fprs", f, 0.0, 1.0)
  s = cfg["num_shadow_models"]
  if isinstance(s, bool) or not isinstance(s, int) or s < 0 or s == 1:
    raise validation.ConfigError(
      f"attack.num_shadow_models={s!r} is invalid: 0 (no LiRA) or an integer >= 2"
    )
  if s and num_audit < 2:
    raise validation.ConfigError(
      f"canaries.num_audit={num_audit} is invalid with LiRA: the candidate pool needs >= 2"
    )
  validation.one_of("attack.lira_variant", cfg["lira_variant"], lira.VARIANTS)
  validation.non_negative_int("attack.shadow_num_steps", cfg["shadow_num_steps"])
  validation.in_range("attack.audit_confidence", cfg["audit_confidence"], 0.0, 1.0)
  validation.in_range(
    "attack.audit_guess_fraction", cfg["audit_guess_fraction"], 0.0, 0.5, high_inclusive=True
  )
  validation.one_of(
    "attack.extraction_candidates", cfg["extraction_candidates"], ("digits", "vocab")
  )
  _extraction_config(cfg).validate()
  validation.positive_int("attack.exposure_chunk_size", cfg["exposure_chunk_size"])
  validation.non_negative_int("attack.num_real_examples", cfg["num_real_examples"])


def validate_config(config: Any) -> None:
  """Validates the whole config (spine, privacy, canaries, attack) before any compute."""
  validation.required_sections(
    config, ("privacy", "canaries", "attack"), needed_by="an attack", hint="configs/attack.py"
  )
  experiment.validate_spine(config, ("privacy", "canaries", "attack"))
  canaries.validate_canaries(config.canaries)
  validate_attack(config.attack, int(config.canaries.num_audit))
  if config.privacy.mechanism != "none":
    from trustml.privacy import config as privacy_config  # pylint: disable=g-import-not-at-top

    privacy_config.validate_privacy(config.privacy, int(config.train.batch_size))


def prepare(
  config: Any, workdir: str | os.PathLike
) -> tuple[experiment.Prepared, canaries.CanarySet, np.ndarray]:
  """Data with canaries inserted, tokenizer (saved to the workdir), encoded arrays and model.

  Returns:
    ``(prepared, canary_set, canary_id)`` with ``canary_id`` ``[N_train]`` (−1: real row).

  Raises:
    ConfigError: if a canary token is out of the vocabulary.
  """
  from trustml.data import sources  # pylint: disable=g-import-not-at-top

  ds = sources.load_dataset(config.data)
  cset = canaries.make(config.canaries, ds.train, max(ds.num_classes, 1))
  ds = canaries.insert(ds, cset, int(config.canaries.seed))
  experiment.check_train_split(config, len(ds.train["text"]))  # Batch size, δ vs 1/N.
  path = pathlib.Path(workdir) / "tokenizer.json"
  if path.exists():
    tok = tokenizers.load(path)
  else:
    cls = tokenizers.WordTokenizer if config.text.kind == "word" else tokenizers.CharTokenizer
    tok = cls.build(
      [str(t) for t in ds.train["text"]],
      vocab_size=config.text.vocab_size,
      min_count=config.text.min_count,
      lowercase=config.text.lowercase,
    )
  # Controls (repeats = 0) never put their prefix in the training split: only the secret
  # words must be known (unseen prefix words encode as UNK, as for any unseen utterance).
  secrets = cset.secrets
  if int(config.canaries.repeats) == 0:
    secrets = tuple(dataclasses.replace(c, prefix="") for c in secrets)
  try:
    canaries.check_in_vocab(secrets + cset.audits, tok)
  except validation.ConfigError as e:
    if int(config.canaries.repeats) != 0:
      raise
    raise validation.ConfigError(
      f"{e}; a control run (canaries.repeats=0) never inserts its secrets, so their words must "
      f"occur in the training text of data.name={config.data.name!r} (SNIPS has the digits)"
    ) from None
  path.parent.mkdir(parents=True, exist_ok=True)
  tok.save(path)
  max_len = int(config.text.max_len)
  train = batching.encode_split(ds.train, tok, max_len)
  evals = batching.encode_split(ds.eval, tok, max_len)
  model = registry.build_model(
    config.model, vocab_size=tok.vocab_size, num_classes=max(ds.num_classes, 1), max_len=max_len
  )
  prepared = experiment.Prepared(dataset=ds, tokenizer=tok, train=train, eval=evals, model=model)
  return prepared, cset, np.asarray(ds.train["canary_id"], np.int32)


def _fit(config: Any, workdir, prepared) -> tuple[dict[str, Any], Any]:
  if config.privacy.mechanism == "none":
    out = loop.fit(config, workdir, prepared=prepared, extra_sections=("canaries", "attack"))
    return out.summary, out.state.params
  from trustml.privacy import training  # pylint: disable=g-import-not-at-top

  res, grad_fn, batch_fn, led = training.build(config, prepared)
  out = loop.fit(
    config,
    workdir,
    prepared=prepared,
    grad_fn=grad_fn,
    batch_fn=batch_fn,
    ledger=led,
    extra_sections=("canaries", "attack"),
    total_steps=res.num_steps,
  )
  return out.summary, out.state.params


def _encode(tok, texts, labels, max_len):
  tokens, mask = tok.encode_batch(list(texts), max_len)
  n = len(texts)
  return {
    "tokens": tokens,
    "mask": mask,
    "label": np.asarray(labels, np.int32),
    "weight": np.ones(n, np.float32),
  }


_LOG_ODDS: dict[int, tuple] = {}


def _log_odds(model, params, arrays, batch_size=256) -> np.ndarray:
  """Target log-odds ``[N]`` in fixed-size jitted batches (one compile per model)."""
  hit = _LOG_ODDS.get(id(model))
  if hit is None or hit[0] is not model:
    fn = jax.jit(lambda p, b: lira.logit_scaled_confidence(model.apply(p, b), b["label"]))
    hit = _LOG_ODDS[id(model)] = (model, fn)
  apply = hit[1]
  arrays = {k: arrays[k] for k in ("tokens", "mask", "label", "weight")}
  n = arrays["tokens"].shape[0]
  out = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    pad = np.r_[idx, np.full(batch_size - len(idx), idx[-1])]
    b = {k: jnp.asarray(np.asarray(v)[pad]) for k, v in arrays.items()}
    out.append(np.asarray(apply(params, b))[: len(idx)])
  return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def attack(
  config: Any,
  workdir,
  prepared: experiment.Prepared,
  cset: canaries.CanarySet,
  canary_id: np.ndarray,
  params,
  train_summary: Mapping[str, Any],
) -> dict[str, Any]:
  """Runs every attack against trained ``params`` and returns the attack summary keys.

  Args:
    config: the run's config.
    workdir: where ``plots/roc.png`` goes.
    prepared: data and model from :func:`prepare`.
    cset: the canaries.
    canary_id: ``[N_train]`` canary id per training row (−1 real).
    params: trained parameters.
    train_summary: the training summary (``privacy/epsilon``, ``privacy/delta``).

  Returns:
    The ``mia/...``, ``audit/...`` and ``canary/...`` keys.
  """
  a, model, tok = config.attack, prepared.model, prepared.tokenizer
  max_len, seed = int(config.text.max_len), int(config.seed)
  out: dict[str, Any] = {}
  plots = pathlib.Path(workdir) / "plots"
  curves = {}
  # --- Canary membership inference and the one-run audit.
  m = len(cset.audits)
  if m >= 2 and 0 < cset.audit_included.sum() < m:
    logging.info(
      "attack 1/3: membership inference + one-run audit on %d audit canaries (%s)",
      m,
      f"LiRA, {a.num_shadow_models} shadow models" if a.num_shadow_models >= 2 else "log-odds",
    )
    arr = _encode(tok, [c.text for c in cset.audits], [c.label for c in cset.audits], max_len)
    target = _log_odds(model, params, arr)
    scores, name = target, "log-odds (loss threshold)"
    if a.num_shadow_models >= 2:
      scores = _lira(config, prepared, canary_id < len(cset.secrets), arr, target)
      name = f"LiRA {a.lira_variant}"
    curve = metrics.roc_curve(scores, cset.audit_included)
    curves[name] = curve
    out["mia/auc"] = curve.auc
    out["mia/num_members"] = int(cset.audit_included.sum())
    out["mia/num_nonmembers"] = int(m - cset.audit_included.sum())
    out["mia/balanced_accuracy"] = metrics.balanced_accuracy(curve)
    for f in a.fprs:
      out[f"mia/tpr_at_{f:g}_fpr"] = metrics.tpr_at_fpr(curve, float(f))
    k = max(1, int(a.audit_guess_fraction * m))
    delta = float(train_summary.get("privacy/delta", config.privacy.get("delta", 1e-5) or 1e-5))
    res = audit.one_run_audit(
      scores,
      cset.audit_included,
      delta=delta,
      num_positive_guesses=k,
      num_negative_guesses=k,
      confidence=float(a.audit_confidence),
    )
    out.update(
      {
        "audit/epsilon_lower_bound": res.epsilon_lower_bound,
        "audit/num_guesses": res.num_guesses,
        "audit/num_correct": res.num_correct,
        "audit/delta": delta,
        "audit/confidence": res.confidence,
      }
    )
  # --- Loss-threshold MIA on real examples: training rows (non-canary) vs held-out rows.
  n_real = int(a.num_real_examples)
  if n_real:
    logging.info("attack 2/3: loss-threshold MIA on up to %d real train vs held-out rows", n_real)
    train_rows = np.nonzero(canary_id < 0)[0]
    gen = rng_lib.numpy_rng(seed, "attack")
    n_real = min(n_real, len(train_rows), batching.num_examples(prepared.eval))
    take_in = gen.choice(train_rows, n_real, replace=False)
    take_out = gen.choice(batching.num_examples(prepared.eval), n_real, replace=False)
    keys = ("tokens", "mask", "label", "weight")
    s_in = _log_odds(model, params, {k: prepared.train[k][take_in] for k in keys})
    s_out = _log_odds(model, params, {k: prepared.eval[k][take_out] for k in keys})
    real = metrics.roc_curve(np.r_[s_in, s_out], np.r_[np.ones(n_real), np.zeros(n_real)])
    curves["real data, loss threshold"] = real
    out["mia/real_auc"] = real.auc
    out["mia/real_advantage"] = metrics.membership_advantage(real)
  # --- Exposure and extraction of each secret canary.
  if cset.secrets:
    logging.info("attack 3/3: exposure and extraction of %d secret canaries", len(cset.secrets))
    digits = np.asarray([tok.token_to_id(d) for d in canaries.DIGIT_WORDS], np.int32)
    cand = (
      digits
      if a.extraction_candidates == "digits"
      else np.arange(4, tok.vocab_size, dtype=np.int32)
    )
    # Refinement scores every candidate per position: ~16k sequences per batch bounds memory.
    ecfg = dataclasses.replace(_extraction_config(a), refine_batch=max(1, 16384 // len(cand)))
    exps, exact, relaxed, tok_acc, ranks = [], [], [], [], []
    for i, c in enumerate(cset.secrets):
      tokens, mask = tok.encode_batch([c.text], max_len)
      start = len(tok.encode(c.prefix))
      pos = np.arange(start, start + len(c.secret))
      if pos[-1] >= max_len:
        raise validation.ConfigError(f"canary {c.text!r} does not fit in text.max_len={max_len}")
      secret_ids = tokens[0, pos]
      space = exposure.SecretSpace(tokens[0], mask[0], pos, digits, c.label)
      rank, e = exposure.exact_exposure(
        model, params, space, [space.index_of(secret_ids)], chunk_size=int(a.exposure_chunk_size)
      )
      exps.append(float(e[0]))
      r = extraction.extract_secret(
        model,
        params,
        tokens[0],
        mask[0],
        pos,
        c.label,
        secret_ids,
        candidates=cand,
        key=rng_lib.stream_key(seed, "attack", i),
        config=ecfg,
      )
      logging.info(
        "secret %d %r (label %d): rank %d of %d, exposure %.2f bits; extracted %r "
        "(exact %s, relaxation alone %s, candidate rank %d)",
        i,
        tok.decode(secret_ids),
        c.label,
        int(rank[0]),
        space.size,
        float(e[0]),
        tok.decode(r.best_secret),
        bool(r.exact_match),
        bool(r.relaxed_exact_match),
        int(r.rank),
      )
      exact.append(float(r.exact_match))
      relaxed.append(float(r.relaxed_exact_match))
      tok_acc.append(r.token_accuracy)
      ranks.append(r.rank)
    out.update(
      {
        "canary/exposure_mean": float(np.mean(exps)),
        "canary/exposure_max": float(np.max(exps)),
        "canary/secret_space_bits": float(np.log2(space.size)),
        "canary/extraction_exact_match": float(np.mean(exact)),
        "canary/extraction_exact_match_relaxed": float(np.mean(relaxed)),
        "canary/extraction_token_accuracy": float(np.mean(tok_acc)),
        "canary/extraction_rank_mean": float(np.mean(ranks)),
        "canary/num_secrets": len(cset.secrets),
        "canary/repeats": int(config.canaries.repeats),
      }
    )
  if curves:
    eps = train_summary.get("privacy/epsilon")
    metrics.plot_roc(
      curves,
      str(plots / "roc.png"),
      epsilon=float(eps) if eps is not None else None,
      delta=out.get("audit/delta"),
      tradeoff_fn=_tradeoff_fn(config, train_summary),
    )
  return out


def _tradeoff_fn(config: Any, s: Mapping[str, Any]):
  """``fpr -> TPR bound`` from the PLD privacy profile of the run, or None if not applicable.

  Rebuilds the run's DpEvent from the ledger summary (constant σ, no adaptive clipping only) and
  takes the pointwise minimum of the (ε, δ(ε)) bounds over a grid of ε.
  """
  if config.privacy.mechanism == "none" or "privacy/sampling_rate" not in s:
    return None
  if config.privacy.get("noise_schedule", "constant") != "constant" or s.get(
    "privacy/adaptive_clipping"
  ):
    return None
  import dp_accounting  # pylint: disable=g-import-not-at-top

  from trustml.privacy import accounting  # pylint: disable=g-import-not-at-top

  event = accounting.run_event(
    [(float(s["privacy/noise_multiplier"]), int(s["privacy/steps"]))],
    sampling=str(s["privacy/sampling"]),
    sampling_rate=float(s["privacy/sampling_rate"]),
    dataset_size=int(s.get("data/num_train", 0)) or None,
  )
  acc = dp_accounting.pld.PLDAccountant(
    neighboring_relation=accounting.neighboring_relation(str(s["privacy/sampling"]))
  )
  acc.compose(event)
  eps_grid = np.linspace(0.0, 3.0 * float(s["privacy/epsilon"]) + 1.0, 60)
  deltas = np.array([acc.get_delta(float(e)) for e in eps_grid])
  return lambda fpr: metrics.profile_tradeoff_bound(fpr, eps_grid, deltas)


def _lira(config, prepared, always_in, arr, target) -> np.ndarray:
  """LiRA over the audit canaries: shadows train on every non-audit row plus half the canaries."""
  a = config.attack
  s = int(a.num_shadow_models)
  keys = ("tokens", "mask", "label", "weight")
  real = {k: np.asarray(prepared.train[k])[always_in] for k in keys}
  pool = {k: np.concatenate([real[k], arr[k]]) for k in keys}
  n_real, m = real["tokens"].shape[0], arr["tokens"].shape[0]
  masks = np.concatenate(
    [np.ones((s, n_real), bool), lira.shadow_masks(s, m, int(config.seed) + 1, num_targets=m)],
    axis=1,
  )
  n = batching.num_examples(prepared.train)
  steps = int(a.shadow_num_steps) or train_config.num_train_steps(config.train, n)
  optimizer = train_config.make_optimizer(config.train, steps)
  params, _ = shadow.train_shadow_models(
    prepared.model,
    optimizer,
    pool,
    masks,
    num_steps=steps,
    batch_size=int(config.train.batch_size),
    seed=int(config.seed) + 1,
    # Several devices (GPUs/TPU cores of a host) split the models when S divides evenly.
    mesh=shadow.make_mesh() if jax.device_count() > 1 and s % jax.device_count() == 0 else None,
  )
  stats = shadow.shadow_statistics(prepared.model, params, arr)
  return lira.lira_scores(target, stats, masks[:, n_real:], variant=a.lira_variant)


def run(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Trains (or resumes) the configured model with canaries, attacks it, writes the summary.

  Args:
    config: ConfigDict as in ``configs/attack.py``.
    workdir: run directory.

  Returns:
    The full summary (training keys and attack keys), also written to ``summary.json``.

  Raises:
    ConfigError: for invalid configs, before any compute.
  """
  validate_config(config)
  prepared, cset, canary_id = prepare(config, workdir)
  train_summary, params = _fit(config, workdir, prepared)
  return _attack_and_write(config, workdir, prepared, cset, canary_id, params, train_summary)


def _attack_and_write(config, workdir, prepared, cset, canary_id, params, train_summary):
  out = attack(config, workdir, prepared, cset, canary_id, params, train_summary)
  summary = dict(train_summary)
  summary.update(out)
  summary["privacy/epsilon"] = train_summary.get("privacy/epsilon", float("inf"))
  writers.write_summary(workdir, summary)
  w = writers.MetricWriter(workdir)
  w.write(
    int(train_summary.get("train/steps", 0)),
    "attack",
    **{k: v for k, v in out.items() if isinstance(v, (int, float))},
  )
  w.close()
  return summary


def attack_workdir(workdir: str | os.PathLike) -> dict[str, Any]:
  """Attacks the finished run in ``workdir`` (its ``config.json`` and newest checkpoint).

  Raises:
    ConfigError: before any compute, if the workdir holds no run, a run not trained for an
      attack (no canaries), no checkpoint yet, or an invalid config.
  """
  path = pathlib.Path(workdir)
  where = f"workdir={str(workdir)!r} is invalid"
  if not (path / "config.json").is_file():
    raise validation.ConfigError(
      f"{where}: it holds no run (no config.json); pass --config to train one there"
    )
  config = ml_collections.ConfigDict(json.loads((path / "config.json").read_text()))
  if "canaries" not in config or "attack" not in config:
    raise validation.ConfigError(
      f"{where}: its run was not trained for an attack (its config.json has no canaries/attack "
      "sections); train one with launch.attack --config=configs/attack.py"
    )
  if not any((path / "checkpoints").glob("[0-9]*")):
    raise validation.ConfigError(
      f"{where}: it holds no checkpoint yet; rerun its training with --config"
    )
  config.attack.fprs = tuple(config.attack.fprs)
  validate_config(config)
  prepared, cset, canary_id = prepare(config, workdir)
  n = batching.num_examples(prepared.train)
  optimizer = train_config.make_optimizer(
    config.train, train_config.num_train_steps(config.train, n)
  )
  example = batching.take_padded(prepared.train, np.arange(1), int(config.train.batch_size))
  template = loop.init_state(prepared.model, optimizer, example, int(config.seed))
  ckpt = checkpoint.Checkpointer(path)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {path}/checkpoints")
  params = ckpt.restore_params(step, template.params)
  ckpt.close()
  train_summary = writers.read_summary(path) if (path / "summary.json").exists() else {}
  return _attack_and_write(config, workdir, prepared, cset, canary_id, params, train_summary)


__all__ = [
  "ATTACK_FIELDS",
  "CANARY_FIELDS",
  "attack",
  "attack_workdir",
  "prepare",
  "run",
  "validate_attack",
  "validate_config",
]
