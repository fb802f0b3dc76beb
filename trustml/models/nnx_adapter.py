"""Adapts Flax NNX networks into the trustml Model contract.

An NNX network is a stateful object; the Model needs pure functions of a parameter pytree.
:func:`from_nnx` splits the network once (``nnx.split``) into its graph and its parameters
(a nested dict of arrays, ``nnx.to_pure_dict``) and each function merges the parameters it is
given back into the graph (``nnx.merge``) before calling the network, so everything
downstream (DP, FL, fairness, attacks) sees the same contract as for Linen or Haiku models.

The network is called as ``network(tokens, mask)``; optional methods ``embed_tokens(tokens)``,
``from_embeddings(emb, mask)`` and ``pool(emb, mask)`` (as in :mod:`trustml.models.networks`)
give ``embed``, ``apply_from_embeddings`` and ``pooled``. Networks with dropout or other
non-parameter state are not supported (``nnx.split`` must give parameters only).
"""

from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from trustml.models import contract


def from_nnx(
  network: nnx.Module,
  *,
  name: str,
  num_classes: int,
  kind: str = "classifier",
  embedding_path: tuple = ("embed", "embedding"),
  extras: Mapping[str, Any] | None = None,
) -> contract.Model:
  """Wraps an NNX network into a Model.

  Args:
    network: an initialised NNX module called as ``network(tokens, mask) -> logits``.
    name: model name.
    num_classes: classes (vocabulary size for an LM).
    kind: ``"classifier"`` or ``"lm"``.
    embedding_path: path of the token table inside the parameter dict.
    extras: static facts recorded on the Model.

  Returns:
    The Model. ``init`` returns the network's own parameters (NNX initialises at
    construction; the key is ignored).

  Raises:
    ValueError: if the network has state other than ``nnx.Param``.

  Example:
    >>> net = MyNnxClassifier(rngs=nnx.Rngs(0))  # doctest: +SKIP
    >>> model = from_nnx(net, name="nnx_mlp", num_classes=4)  # doctest: +SKIP
  """
  graphdef, state, rest = nnx.split(network, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f"network={type(network).__name__} is invalid: state other than nnx.Param")
  initial = nnx.to_pure_dict(state)

  def merged(params):
    return nnx.merge(graphdef, params)

  def init(rng, batch):
    del rng, batch
    return initial

  def apply(params, batch, *, rng=None, train=False):
    del rng, train
    return merged(params)(batch["tokens"], batch["mask"])

  def _method(params, method):
    net = merged(params)
    if not hasattr(net, method):
      raise NotImplementedError(f"{type(network).__name__} has no method {method!r}")
    return getattr(net, method)

  def embed(params, batch):
    return _method(params, "embed_tokens")(batch["tokens"])

  def apply_from_embeddings(params, embeddings, batch, *, rng=None, train=False):
    del rng, train
    return _method(params, "from_embeddings")(embeddings, batch["mask"])

  def pooled(params, batch):
    net = merged(params)
    return net.pool(net.embed_tokens(batch["tokens"]), batch["mask"])

  return contract.assemble(
    name=name,
    kind=kind,
    num_classes=num_classes,
    init=init,
    apply=apply,
    embed=embed,
    apply_from_embeddings=apply_from_embeddings,
    pooled=pooled,
    embedding_path=tuple(embedding_path),
    framework="nnx",
    extras=extras,
  )


__all__ = ["from_nnx"]
