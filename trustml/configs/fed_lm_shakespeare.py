"""Federated character language model on Tiny Shakespeare, one client per speaker.

Launch:
  python -m launch.federated --config=configs/fed_lm_shakespeare.py --workdir=/tmp/shakes
  python -m launch.federated --config=configs/fed_lm_shakespeare.py:tokenizer=word --workdir=/tmp/sw
  python -m launch.federated --config=configs/fed_lm_shakespeare.py:smoke --workdir=/tmp/shakes_smoke

Args: every arg of ``configs/fed_nlu.py`` (``data`` is fixed to tiny_shakespeare and ``model`` to
causal_lm), plus
  tokenizer: char | word (default char).
  max_len: tokens per speech (longer speeches are truncated).
  min_speeches: keep speakers with at least this many speeches.
  width: model width (embedding and attention); layers: transformer blocks.
"""

import ml_collections

from trustml.configs import fed_nlu, nlu
from trustml.core import config_args

LM_ARGS = dict(tokenizer="char", max_len=96, min_speeches=10, width=64, layers=2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the Shakespeare LM config for ``arg`` (see module docstring)."""
  smoke = config_args.smoke_requested(arg)
  fed = fed_nlu.FED_ARGS if smoke else {**fed_nlu.FED_ARGS, "per_round": 10, "rounds": 40}
  a = config_args.parse_common(arg, data="tiny_shakespeare", **fed, **LM_ARGS)
  return add_language_model(fed_nlu.add_federated(nlu.build(a), a), a)


def add_language_model(config: ml_collections.ConfigDict, a: ml_collections.ConfigDict):
  """Turns a federated config into the per-speaker causal LM on Tiny Shakespeare.

  Args:
    config: a config from :func:`trustml.configs.fed_nlu.add_federated` (changed in place).
    a: parsed args with :data:`LM_ARGS`.

  Returns:
    ``config``.
  """
  smoke = a.smoke

  def pick(key: str, small):  # The smoke size unless the arg set this key explicitly.
    return config_args.smoke_value(a, key, small)

  config.data.min_speeches = pick("min_speeches", 60)  # Drop speakers with fewer.
  config.data.test_fraction = 0.2  # Each speaker's last 20% of speeches are held out.
  # Character (or word) tokenizer built on the training speeches; BOS/EOS added per speech.
  config.text.kind = a.tokenizer
  config.text.lowercase = a.tokenizer == "word"
  config.text.vocab_size = 128 if a.tokenizer == "char" else 6000
  config.text.max_len = pick("max_len", 32)
  # Small causal transformer with tied embeddings.
  from trustml.models import registry  # pylint: disable=g-import-not-at-top

  config.model = registry.default_model_config("causal_lm")
  config.model.embed_dim = pick("width", 16)  # Model width.
  config.model.num_layers = pick("layers", 1)  # Transformer blocks.
  config.model.num_heads = (
    4 if config.model.embed_dim % 4 == 0 and not smoke else 2
  )  # Attention heads.
  config.model.mlp_dim = 2 * config.model.embed_dim  # MLP width.
  config.partition.kind = "natural"  # One client per speaker.
  config.partition.min_examples = 2
  config.algorithm.client_learning_rate = 0.3
  config.federated.batch_size = 8
  config.federated.max_local_steps = 8 if not smoke else 2
  config.continual.storage_cap = 16 if not smoke else 8
  return config
