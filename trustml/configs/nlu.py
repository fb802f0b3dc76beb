"""Base config for NLU classification (and the base every other config builds on).

Launch:
  python -m launch.train --config=configs/nlu.py --workdir=/tmp/nlu
  python -m launch.train --config=configs/nlu.py:data=snips,model=transformer --workdir=/tmp/snips
  python -m launch.train --config=configs/nlu.py:smoke --workdir=/tmp/smoke

Args (comma-separated after ``:``):
  data: synthetic | snips | sst2 | imdb | civil_comments | hatexplain (default synthetic).
  model: bag | cnn | transformer (default bag).
  smoke: shrink everything for a seconds-long run.
  seed: root seed.
"""

import ml_collections

from trustml.core import config_args
from trustml.data import sources
from trustml.models import registry
from trustml.train import config as train_config

# Per-dataset text settings: (vocab_size, max_len).
_TEXT = {
  "synthetic": (4000, 24),
  "snips": (8000, 32),
  "sst2": (12000, 48),
  "imdb": (20000, 256),
  "civil_comments": (20000, 128),
  "hatexplain": (12000, 64),
}
# Per-(dataset, model) training settings: (batch_size, num_epochs, learning_rate).
_TRAIN = {
  "bag": (64, 6.0, 2e-3),
  "cnn": (64, 5.0, 1e-3),
  "transformer": (64, 3.0, 5e-4),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the NLU config for ``arg`` (see module docstring)."""
  return build(config_args.parse_common(arg))


def build(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The base config from parsed args (``data``, ``model``, ``seed``, ``smoke``).

  Every experiment config starts here and adds its own sections (``dp_nlu.add_privacy``,
  ``fed_nlu.add_federated``, ``aps.fairness_section``, ...): one level, no re-parsed strings.

  Args:
    a: :func:`trustml.core.config_args.parse_common` output.

  Returns:
    The config.
  """
  config = ml_collections.ConfigDict()
  config.seed = a.seed  # Root seed: params, data order, dropout, DP noise streams.
  # Data source: name, local data dir (data.dir, else $TRUSTML_DATA_DIR, else ../shared/data).
  config.data = sources.default_data_config(a.data)
  # Tokenization: word tokenizer built on the training split only.
  vocab_size, max_len = _TEXT.get(a.data, (8000, 32))
  config.text = train_config.default_text_config(vocab_size=vocab_size, max_len=max_len)
  # Network: bag | cnn | transformer with its defaults (trustml.models.registry).
  config.model = registry.default_model_config(a.model)
  # Optimisation.
  batch_size, epochs, lr = _TRAIN[a.model]
  config.train = train_config.default_train_config(
    batch_size=batch_size,
    num_epochs=epochs,
    learning_rate=lr,
    optimizer="adamw",
    weight_decay=1e-4,
    schedule="cosine",
    warmup_steps=50,
    log_every=50,
    checkpoint_every=200,
  )
  # Privacy: non-private by default (configs/dp_nlu.py switches the DP engine on).
  config.privacy = ml_collections.ConfigDict({"mechanism": "none"})
  # Devices: batch split over the mesh's data axis (--config.mesh.num_devices=0: all, of all
  # processes); fsdp=True splits large parameters and optimizer moments over it too.
  config.mesh = train_config.default_mesh_config()
  if a.smoke:
    config.text.vocab_size = 500
    config.text.max_len = 16
    config.train.num_epochs = 0.0
    config.train.num_steps = 6
    config.train.batch_size = 16
    config.train.warmup_steps = 1
    config.train.log_every = 2
    config.train.checkpoint_every = 3
    config.train.eval_batch_size = 128
    _shrink_model(config.model)
    if a.data == "synthetic":
      config.data.num_users = 60
    elif "max_examples" in config.data:
      config.data.max_examples = 256
  return config


def _shrink_model(model: ml_collections.ConfigDict) -> None:
  for key, small in (("embed_dim", 16), ("hidden_dim", 16), ("num_filters", 8), ("mlp_dim", 32)):
    if key in model:
      model[key] = small
  if "num_layers" in model:
    model.num_layers = 1
  if "num_heads" in model:
    model.num_heads = 2


def get_sweep(arg: str | None = None) -> list[dict]:
  """A small architecture x seed sweep (for launch/sweep.py)."""
  a = config_args.parse_arg(arg, seeds=2)
  return [
    {"name": f"{m}_seed{s}", "arg": f"model={m},seed={s}"}
    for m in ("bag", "cnn", "transformer")
    for s in range(a.seeds)
  ]
