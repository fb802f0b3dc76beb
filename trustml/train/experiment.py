"""Shared data + model setup from a config, reused by every pillar.

``prepare(config)`` loads the dataset (``config.data``), builds or reloads the tokenizer
(``config.text``; saved to ``<workdir>/tokenizer.json`` so a resumed run tokenizes identically),
encodes the training and evaluation splits, and builds the Model (``config.model``).
"""

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from trustml.core import distributed, validation
from trustml.data import batching, dataset, tokenizers
from trustml.models import contract, registry
from trustml.train import config as train_config

SECTIONS = ("seed", "data", "text", "model", "train", "privacy", "mesh")


@dataclasses.dataclass(frozen=True)
class Prepared:
  """Everything a run needs before its first step.

  Attributes:
    dataset: the raw TextDataset.
    tokenizer: the tokenizer (built from training text only).
    train: encoded training arrays.
    eval: encoded evaluation arrays.
    model: the Model.
  """

  dataset: dataset.TextDataset
  tokenizer: Any
  train: Mapping[str, np.ndarray]
  eval: Mapping[str, np.ndarray]
  model: contract.Model


def validate_spine(config: Any, extra_sections: tuple[str, ...] = ()) -> None:
  """Validates the spine sections of a config before any compute.

  Args:
    config: the ConfigDict.
    extra_sections: further top-level sections the caller owns and validates itself
      (``"data"`` among them: the caller brings its own data, not a spine source).

  Raises:
    ConfigError: naming the first invalid field.
  """
  validation.known_fields("config", config.keys(), SECTIONS + tuple(extra_sections))
  validation.non_negative_int("seed", config.seed)
  train_config.validate_text(config.text)
  train_config.validate_train(config.train)
  if "mesh" in config:
    train_config.validate_mesh(config.mesh)
  registry.validate_model(config.model)
  from trustml.data import sources  # Imported lazily: sources pull in TFDS.

  if "data" not in extra_sections:
    sources.validate_data(config.data)


def _tokenizer(config: Any, ds: dataset.TextDataset, workdir: str | os.PathLike | None):
  path = pathlib.Path(workdir) / "tokenizer.json" if workdir else None
  if path is not None and path.exists():
    return tokenizers.load(path)
  texts = [str(t) for t in ds.train["text"]]
  cls = tokenizers.WordTokenizer if config.text.kind == "word" else tokenizers.CharTokenizer
  tok = cls.build(
    texts,
    vocab_size=config.text.vocab_size,
    min_count=config.text.min_count,
    lowercase=config.text.lowercase,
  )
  if path is not None and distributed.is_main_process():
    # Every process builds the same tokenizer; process 0 writes it, atomically, so another
    # process never reads a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tok.save(tmp)
    os.replace(tmp, path)
  return tok


def check_train_split(config: Any, num_train: int) -> None:
  """Checks the config against the size of the training split, before any compute.

  Rejects a batch larger than the training split, and warns when a DP run's δ exceeds 1/N
  (a mechanism that releases one example in the clear is (0, 1/N)-DP, so such a δ promises
  little).

  Args:
    config: the full config (``train.batch_size``; ``privacy.delta`` when DP is on).
    num_train: examples in the training split.

  Raises:
    ConfigError: if ``train.batch_size`` exceeds ``num_train``.
  """
  bs = int(config.train.batch_size)
  if bs > num_train:
    raise validation.ConfigError(
      f"train.batch_size={bs} is invalid: must be <= the {num_train} training examples of "
      f"data.name={config.data.name!r}"
    )
  privacy = config.get("privacy", None)
  if privacy is None or privacy.get("mechanism", "none") == "none" or "delta" not in privacy:
    return
  validation.warn_large_delta("privacy.delta", privacy.delta, num_train, "training examples")


def prepare(config: Any, workdir: str | os.PathLike | None = None) -> Prepared:
  """Loads data, tokenizes and builds the model described by ``config``.

  Args:
    config: a config with ``data``, ``text``, ``model`` sections (see ``configs/nlu.py``).
    workdir: where the tokenizer is saved (and reloaded on resume); ``None`` keeps it in memory.

  Returns:
    The Prepared bundle.
  """
  from trustml.data import sources

  ds = sources.load_dataset(config.data)
  check_train_split(config, len(ds.train["text"]))
  tok = _tokenizer(config, ds, workdir)
  lm = config.model.name == "causal_lm"
  train = batching.encode_split(ds.train, tok, config.text.max_len, lm=lm)
  evals = batching.encode_split(ds.eval, tok, config.text.max_len, lm=lm)
  num_classes = max(ds.num_classes, 1)
  model = registry.build_model(
    config.model, vocab_size=tok.vocab_size, num_classes=num_classes, max_len=config.text.max_len
  )
  return Prepared(dataset=ds, tokenizer=tok, train=train, eval=evals, model=model)


def _split_arrays(field: str, tokens: Any, labels: Any, mask: Any | None) -> dict[str, np.ndarray]:
  tokens = np.asarray(tokens)
  labels = np.asarray(labels)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
    raise validation.ConfigError(
      f"{field}.tokens shape={tokens.shape} dtype={tokens.dtype} is invalid: must be int [N, T]"
    )
  n = tokens.shape[0]
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise validation.ConfigError(
      f"{field}.labels shape={labels.shape} is invalid: must be int [N] with N={n} "
      "(one label per row of tokens)"
    )
  if tokens.min(initial=0) < 0:
    raise validation.ConfigError(f"{field}.tokens is invalid: token ids must be >= 0")
  m = (tokens != 0) if mask is None else np.asarray(mask).astype(bool)
  if m.shape != tokens.shape:
    raise validation.ConfigError(f"{field}.mask shape={m.shape} is invalid: must be {tokens.shape}")
  return {
    "tokens": tokens.astype(np.int32),
    "mask": m,
    "label": labels.astype(np.int32),
    "weight": np.ones((n,), np.float32),
    "user_id": np.full((n,), -1, np.int32),
    "group": np.full((n,), -1, np.int32),
    "index": np.arange(n, dtype=np.int32),
  }


def from_arrays(
  model: contract.Model,
  train: tuple[Any, Any],
  eval: tuple[Any, Any],  # noqa: A002  (the split's name, as in Prepared)
  *,
  train_mask: Any | None = None,
  eval_mask: Any | None = None,
  check: bool = True,
) -> Prepared:
  """Your own arrays and Model as a Prepared bundle for ``trustml.train.run(..., prepared=)``.

  Args:
    model: a Model (``trustml.models.from_flax(MyModule(...), ...)``, ``from_haiku``).
    train: ``(tokens int [N, T], labels int [N])`` (token id 0 is padding).
    eval: the same for the evaluation split.
    train_mask: token validity ``[N, T]`` (default ``tokens != 0``).
    eval_mask: the same for ``eval``.
    check: check the Model on one batch first (:func:`trustml.models.registry.check_model`).

  Returns:
    The Prepared bundle (no dataset or tokenizer: the arrays are already encoded).

  Raises:
    ConfigError: for arrays of the wrong shape or type, or a Model that breaks its contract.

  Example:
    >>> prepared = from_arrays(model, (x_train, y_train), (x_test, y_test))  # doctest: +SKIP
    >>> trustml.train.run("dp_nlu", "runs/mine", prepared=prepared)  # doctest: +SKIP
  """
  train_arrays = _split_arrays("train", *train, train_mask)
  eval_arrays = _split_arrays("eval", *eval, eval_mask)
  if check:
    import jax  # noqa: PLC0415

    example = batching.take_padded(train_arrays, np.arange(min(4, len(train[1]))), 4)
    params = model.init(jax.random.key(0), example)
    registry.check_model(model, params, example)
  return Prepared(dataset=None, tokenizer=None, train=train_arrays, eval=eval_arrays, model=model)


def run(config: Any, workdir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
  """Trains the run a config describes: non-private, or DP-SGD / eDP-SGD when configured.

  What ``launch/train.py`` and ``trustml.train.run`` call: :func:`trustml.train.loop.train`
  when ``privacy.mechanism`` is ``"none"``, else :func:`trustml.privacy.training.run`.

  Args:
    config: a full config (``configs/nlu.py``, ``configs/dp_nlu.py``).
    workdir: the run directory; rerunning resumes.
    **kwargs: passed to the trainer (e.g. ``stop_after_step``).

  Returns:
    The summary (also written to ``summary.json``).

  Raises:
    ConfigError: for an invalid config, before any compute.
  """
  privacy = config.get("privacy", None)
  if privacy is not None and privacy.get("mechanism", "none") != "none":
    from trustml.privacy import training  # noqa: PLC0415  (the DP engine plugs into the loop)

    return training.run(config, workdir, **kwargs)
  from trustml.train import loop  # noqa: PLC0415  (loop imports this module)

  return loop.train(config, workdir, **kwargs)


__all__ = [
  "SECTIONS",
  "Prepared",
  "check_train_split",
  "from_arrays",
  "prepare",
  "run",
  "validate_spine",
]
