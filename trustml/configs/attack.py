"""Train-then-attack config: an NLU run with canaries, then MIA, audit, exposure, extraction.

Launch:
  python -m launch.attack --config=configs/attack.py --workdir=/tmp/attack
  python -m launch.attack --config=configs/attack.py:data=snips,model=transformer,eps=1 \
      --workdir=/tmp/attack_eps1
  python -m launch.attack --config=configs/attack.py:smoke --workdir=/tmp/attack_smoke
  python -m launch.attack --workdir=/tmp/attack   # attack an already trained workdir

Args (comma-separated after ``:``):
  data: synthetic | snips | ... (default synthetic).
  model: bag | cnn | transformer (default transformer). The transformer is the order-aware
    canary-study variant (:data:`ORDERED_TRANSFORMER`: causal width-5 stem, causal attention,
    max pooling; no dropout, 10 epochs unless ``dropout``/``epochs`` say otherwise).
  ordered: with ``ordered=False`` the transformer is configs/nlu.py's (bidirectional,
    mean-pooled, dropout 0.1, 3 epochs), which memorises a secret's digit *set* rather than
    its order (docs/attacks.md).
  eps: target ε; ``inf`` (default) trains non-privately (configs/nlu.py), a number trains with
    eDP-SGD calibrated to it (configs/dp_nlu.py).
  repeats: copies of each secret canary in training (default 10; 0 = control, never inserted).
  secrets: number of secret canaries (default 4, at most 8 templates).
  shadows: LiRA shadow models (0 = log-odds loss-threshold attack; >= 2 = LiRA).
  dropout: model dropout rate (-1 keeps the model's default); a non-DP defense.
  epochs: training epochs (-1 keeps the default); few epochs = early stopping, a non-DP defense.
  small: SNIPS 'small' training pool (2,100) and a narrower model, for CPU-sized studies.
  smoke: shrink everything for a seconds-long run.
  seed: root seed.
"""

import math

import ml_collections

from trustml.configs import dp_nlu, nlu
from trustml.core import config_args

# The canary study's transformer classifier: a causal width-5 convolutional stem, causal
# attention and a max over positions of the final states. Measured on SNIPS canaries
# (docs/attacks.md): mean exposure 11.0 bits over 5 draws (the CNN: 11.0); 11.2 vs 10.2 bits
# with the last token's state on the 3 draws both saw; 8.1 (seed 0) for the NLU default
# (mean-pooled, bidirectional), which memorises a secret's digit set, not its order.
ORDERED_TRANSFORMER = dict(conv_kernel=5, causal_attention=True, pooling="max")
ORDERED_TRANSFORMER_EPOCHS = 10.0


ATTACK_ARGS = dict(
  model="transformer",
  ordered=True,
  eps=float("inf"),
  repeats=10,
  secrets=4,
  shadows=0,
  dropout=-1.0,
  epochs=-1.0,
  small=False,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the attack config for ``arg`` (see module docstring)."""
  return build(config_args.parse_common(arg, **ATTACK_ARGS))


def build(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The attack config from parsed args (:data:`ATTACK_ARGS` and the common ones).

  Args:
    a: :func:`trustml.core.config_args.parse_common` output.

  Returns:
    The config: ``nlu.build`` (plus ``dp_nlu.add_privacy`` for a finite ε), canaries, attack.
  """
  config = nlu.build(a)
  if not math.isinf(a.eps):
    dp_nlu.add_privacy(config, a)
  if a.model == "transformer" and a.ordered:
    config.model.update(ORDERED_TRANSFORMER)
    config.model.dropout_rate = 0.0
    if not a.smoke:
      config.train.num_epochs = ORDERED_TRANSFORMER_EPOCHS
  if a.small and a.data == "snips":
    config.data.snips_train = "small"  # 2,100 training queries instead of 13,784.
  if a.small:
    for key, width in (("embed_dim", 64), ("hidden_dim", 64), ("mlp_dim", 128)):
      if key in config.model:
        config.model[key] = width
    if "num_layers" in config.model:
      config.model.num_layers = 1
  if a.dropout >= 0 and "dropout_rate" in config.model:
    config.model.dropout_rate = a.dropout  # Non-DP defense: dropout.
  if a.epochs >= 0:
    config.train.num_epochs = a.epochs  # Non-DP defense: early stopping (fewer epochs).
  config.canaries = ml_collections.ConfigDict(
    dict(
      num_secret=a.secrets,  # Secret canaries, one template each ("my pin code is 4 7 1 9").
      secret_length=4,  # Digits per secret: |R| = 10^4.
      repeats=a.repeats,  # Copies of each secret canary in the training split.
      label=-1,  # Canary intent label; -1 draws one per canary.
      num_audit=256,  # Audit canaries (random words, random label), each IN with prob 1/2.
      audit_length=6,  # Words per audit canary.
      seed=a.seed,  # Seed of canary secrets, labels, audit coins and the shuffle.
    )
  )
  config.attack = ml_collections.ConfigDict(
    dict(
      fprs=(0.001, 0.01),  # FPRs at which TPR is reported (each in (0, 1)).
      num_shadow_models=a.shadows,  # 0: log-odds attack; >= 2: LiRA (vmapped shadows).
      lira_variant="online",  # online | offline | online_fixed_variance | offline_fixed_variance.
      shadow_num_steps=0,  # Shadow training steps (0: as many as the target).
      audit_confidence=0.95,  # One-run audit: P[ε_LB <= ε] >= this.
      audit_guess_fraction=0.1,  # One-run audit: k+ = k- = this share of the audit canaries.
      extraction_candidates="digits",  # digits (attacker knows the format) | vocab.
      extraction_restarts=64,  # Random restarts of the relaxed search (vmapped).
      extraction_steps=200,  # Adam steps per restart.
      extraction_learning_rate=0.1,  # Adam learning rate on the relaxation logits.
      extraction_refine_sweeps=2,  # Exact coordinate-ascent passes after decoding (0 = off).
      exposure_chunk_size=1024,  # Secret candidates scored per jitted chunk.
      num_real_examples=1000,  # Real train vs held-out examples for the loss-threshold MIA.
    )
  )
  if a.smoke:
    config.canaries.num_audit = 32
    # Explicit args win over the smoke sizes.
    config.canaries.repeats = config_args.smoke_value(a, "repeats", min(a.repeats, 4))
    config.canaries.num_secret = config_args.smoke_value(a, "secrets", min(a.secrets, 2))
    config.attack.extraction_restarts = 4
    config.attack.extraction_steps = 10
    config.attack.exposure_chunk_size = 2048
    config.attack.num_real_examples = 64
    config.text.vocab_size = 2000  # Keep the digit words in the vocabulary.
  return config
