"""Named RNG streams derived from one root seed.

Every run has one root seed. Named streams (``params``, ``data``, ``sampling``, ``dp_noise``,
``dropout``, ``attack``, ...) are derived with ``jax.random.fold_in`` from a stable hash of
the name, and per-step keys with ``fold_in(stream, step)`` so a resumed run draws exactly the
same numbers as an uninterrupted one.
"""

import dataclasses
import zlib

import jax
import numpy as np

STREAMS = ("params", "data", "sampling", "dp_noise", "dropout", "attack", "clients", "eval")


def _stream_id(name: str) -> int:
  return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class RngStreams:
  """Deterministic named key streams from one root seed.

  Example:
    >>> streams = RngStreams(seed=0)
    >>> k = streams.at("dropout", step=3)
  """

  seed: int

  def root(self) -> jax.Array:
    """The root typed key."""
    return jax.random.key(self.seed)

  def stream(self, name: str) -> jax.Array:
    """The key of a named stream.

    Args:
      name: stream name, e.g. ``"dp_noise"``.

    Returns:
      A typed PRNG key unique to ``(seed, name)``.
    """
    return jax.random.fold_in(self.root(), _stream_id(name))

  def at(self, name: str, step: int | jax.Array) -> jax.Array:
    """The key of a named stream at a counter (step, round, client index).

    Args:
      name: stream name.
      step: a non-negative counter; Python int or traced int32.

    Returns:
      ``fold_in(stream(name), step)``.
    """
    return jax.random.fold_in(self.stream(name), step)

  def numpy(self, name: str, step: int = 0) -> np.random.Generator:
    """A NumPy generator for host-side work (data order, partitions), seeded by name and step."""
    return np.random.default_rng([self.seed, _stream_id(name), int(step)])


def stream_key(seed: int, name: str, step: int | jax.Array | None = None) -> jax.Array:
  """Shorthand for ``RngStreams(seed).stream(name)`` or ``.at(name, step)``."""
  streams = RngStreams(seed)
  return streams.stream(name) if step is None else streams.at(name, step)


def numpy_rng(seed: int, name: str, step: int = 0) -> np.random.Generator:
  """Shorthand for ``RngStreams(seed).numpy(name, step)``."""
  return RngStreams(seed).numpy(name, step)


__all__ = ["STREAMS", "RngStreams", "numpy_rng", "stream_key"]


def named(key: jax.Array, name: str) -> jax.Array:
  """Derives a named sub-key of ``key`` (e.g. ``"dp_noise"`` or ``"dropout"`` of a step key)."""
  return jax.random.fold_in(key, _stream_id(name))


__all__ += ["named"]
