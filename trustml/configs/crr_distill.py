"""Counterfactual role-reversal distillation: plain KD vs CDA vs teacher modification vs both.

Trains a teacher causal LM on a gender-biased corpus (the embedded corpus's profession-pronoun
``lm`` split, WinoBias pro-stereotyped sentences and Tiny Shakespeare), distils one smaller
student per variant and reports BOLD generation disparity and held-out perplexity
(``trustml.fairness.crr.run``; see docs/fairness_distill.md).

Launch:
  python -m launch.fairness --config=configs/crr_distill.py --workdir=/tmp/crr
  python -m launch.fairness --config=configs/crr_distill.py:variants=plain+mod_mean --workdir=/tmp/crr1
  python -m launch.fairness --config=configs/crr_distill.py:smoke --workdir=/tmp/crr_smoke

Args (comma-separated after ``:``; variant lists use ``+`` between variants, and ``&`` inside
a variant joins CDA and a modification, e.g. ``variants=plain+cda&mod_mean``, quoted for the
shell):
  variants: the students to distil (plain, cda, cda_one_sided, cda_two_sided, mod_max,
    mod_mean, mod_geometric_mean and joins of one CDA with one mod_).
  temperature: KD temperature.
  alpha: weight of the LM cross-entropy in the KD loss.
  smoke: shrink everything to a seconds-long run.
  seed: root seed.
"""

import ml_collections

from trustml.core import config_args
from trustml.models import registry
from trustml.train import config as train_config

DEFAULT_VARIANTS = "plain+cda+cda_one_sided+mod_max+mod_mean+mod_geometric_mean+cda&mod_mean"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the CRR distillation config for ``arg`` (see module docstring)."""
  a = config_args.parse_arg(
    arg, variants=DEFAULT_VARIANTS, temperature=2.0, alpha=0.5, smoke=False, seed=0
  )
  config = ml_collections.ConfigDict()
  config.seed = a.seed  # Root seed: parameter init, data order, generation sampling.
  config.fairness = ml_collections.ConfigDict()
  config.fairness.task = "crr_distill"  # Dispatch key of launch/fairness.py.
  # Gender swap: 'his' (her <-> his; him unswapped: the published table) | 'him' | 'pos' (CDA
  # swaps her/his/him/hers by the next-token rule; teacher-probability remapping keeps his).
  config.fairness.her_counterpart = "his"

  config.data = ml_collections.ConfigDict()
  config.data.dir = ""  # Real-data root ('' = $TRUSTML_DATA_DIR, then ../shared/data).
  config.data.seed = a.seed  # Seed of the embedded corpus.
  config.data.num_lm_sentences = 5000  # Embedded profession-pronoun sentences (0 = off).
  config.data.lm_bias = 0.8  # P(she | female-stereotyped) = P(he | male-stereotyped).
  config.data.winobias = True  # Add WinoBias pro-stereotyped sentences (dev train, test held out).
  config.data.shakespeare_max_sequences = 5000  # Tiny Shakespeare pieces (0 = off).

  # Word tokenizer on the training text; sequences are BOS + words + EOS, at most max_len.
  config.text = train_config.default_text_config(vocab_size=2000, min_count=2, max_len=24)

  config.teacher = ml_collections.ConfigDict()
  config.teacher.model = registry.default_model_config("causal_lm")  # Tied-embedding causal LM.
  config.teacher.model.update(embed_dim=96, num_layers=2, num_heads=4, mlp_dim=192)
  config.teacher.train = train_config.default_train_config(
    batch_size=32,  # Sequences per step.
    num_steps=1000,  # Teacher optimizer steps.
    optimizer="adam",  # Optax optimizer.
    learning_rate=2e-3,  # Peak learning rate.
    schedule="cosine",  # Warm-up then cosine decay.
    warmup_steps=50,  # Linear warm-up steps.
    log_every=100,  # Steps between metrics.jsonl training events.
  )

  config.student = ml_collections.ConfigDict()
  config.student.model = registry.default_model_config("causal_lm")  # Smaller causal LM.
  config.student.model.update(embed_dim=64, num_layers=1, num_heads=2, mlp_dim=128)
  config.student.train = train_config.default_train_config(
    batch_size=32,  # Sequences per step.
    num_steps=600,  # Student optimizer steps (same for every variant).
    optimizer="adam",  # Optax optimizer.
    learning_rate=3e-3,  # Peak learning rate.
    schedule="cosine",  # Warm-up then cosine decay.
    warmup_steps=50,  # Linear warm-up steps.
    log_every=100,  # Steps between metrics.jsonl training events.
  )

  # Data-parallel mesh of every model's training (0 = all visible devices; batch rows split
  # over them, parameters replicated or FSDP-split).
  config.mesh = train_config.default_mesh_config()

  config.distill = ml_collections.ConfigDict()
  config.distill.temperature = a.temperature  # KD softening temperature tau.
  config.distill.alpha = a.alpha  # Weight of the hard-label LM cross-entropy.
  config.distill.kd_weight = 1.0  # Weight of tau^2 * KL(teacher || student).
  # Students, comma-separated (see trustml.fairness.distill.parse_variant).
  config.distill.variants = ",".join(v.replace("&", "+") for v in a.variants.split("+"))
  config.distill.headline_variant = ""  # Variant behind generation/* headline keys ('' = last).

  config.generation = ml_collections.ConfigDict()
  config.generation.max_prompts_per_group = 48  # BOLD prompts drawn per group (0 = all).
  config.generation.samples_per_prompt = 3  # Continuations sampled per prompt.
  config.generation.max_prompt_len = 8  # BOS + the last 7 prompt words (UNK when unknown).
  config.generation.max_new_tokens = 16  # Generated positions (prompt + new <= text.max_len).
  config.generation.temperature = 1.0  # Sampling temperature (0 = greedy).
  config.generation.top_k = 0  # Top-k truncation (0 = none).
  config.generation.batch_size = 256  # Prompts per jitted sampling call.
  config.generation.gender_prompts = True  # Also sample BOLD actor/actress prompts.

  if a.smoke:
    config.data.num_lm_sentences = 300
    config.data.shakespeare_max_sequences = 200
    config.text.vocab_size = 600
    config.text.max_len = 16
    for sec in (config.teacher, config.student):
      sec.model.update(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
      sec.train.num_steps = 6
      sec.train.batch_size = 16
      sec.train.warmup_steps = 1
      sec.train.log_every = 3
    config.generation.max_prompts_per_group = 3
    config.generation.samples_per_prompt = 1
    config.generation.max_prompt_len = 6
    config.generation.max_new_tokens = 6
    config.generation.batch_size = 64
  return config
