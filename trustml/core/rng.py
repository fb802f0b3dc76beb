"""Named RNG streams derived from one root seed.

Every run has one root seed. Named streams (``params``, ``data``, ``sampling``, ``dp_noise``,
``dropout``, ``attack``, ...) are derived with ``jax.random.fold_in`` from a stable hash of
the name, and per-step keys with ``fold_in(stream, step)`` so a resumed run draws exactly the
same numbers as an uninterrupted one.
"""

import dataclasses
import secrets
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


@dataclasses.dataclass(frozen=True)
class SecretStreams:
  """Named streams from a secret 128-bit entropy: the randomness of every DP draw.

  A DP run's noise and sampling coins must not be derivable from anything the run writes
  (``config.json`` holds the public ``seed``). :meth:`fresh` draws the entropy from the OS at a
  run's first start; the privacy ledger keeps it in the run's checkpoint only, so a resumed
  run draws the same numbers. :meth:`from_seed` fixes it (``privacy.noise_seed``) for
  reproducible research, and the run then says that its guarantee assumes the seed is secret.

  Attributes:
    entropy: a non-negative integer (128 bits from the OS by default). Not shown in ``repr``.
  """

  entropy: int = dataclasses.field(repr=False)

  @classmethod
  def fresh(cls) -> "SecretStreams":
    """Entropy from ``secrets.randbits(128)`` (the OS's CSPRNG); process 0's in a multi-process
    run, so every process draws the same noise and Poisson coins."""
    from trustml.core import distributed  # noqa: PLC0415  (distributed imports nothing of ours)

    return cls(distributed.same_on_all_processes(secrets.randbits(128)))

  @classmethod
  def for_run(cls, noise_seed: int | None) -> "SecretStreams":
    """:meth:`from_seed` when a ``noise_seed`` is configured, else :meth:`fresh`."""
    return cls.fresh() if noise_seed is None else cls.from_seed(int(noise_seed))

  @classmethod
  def from_seed(cls, noise_seed: int) -> "SecretStreams":
    """Deterministic streams from an explicit ``privacy.noise_seed``."""
    if int(noise_seed) < 0:
      raise ValueError(f"noise_seed={noise_seed} is invalid: must be >= 0")
    words = np.random.SeedSequence([int(noise_seed), _stream_id("noise_seed")]).generate_state(4)
    return cls(sum(int(w) << (32 * i) for i, w in enumerate(words)))

  def key_data(self, name: str) -> np.ndarray:
    """Raw ``uint32[2]`` data of a typed threefry key for stream ``name`` (for the device)."""
    seq = np.random.SeedSequence(self.entropy, spawn_key=(_stream_id(name),))
    return seq.generate_state(2, np.uint32)

  def numpy(self, name: str, step: int = 0) -> np.random.Generator:
    """A NumPy generator for host-side DP draws (Poisson coins, cohorts) at ``step``."""
    seq = np.random.SeedSequence(self.entropy, spawn_key=(_stream_id(name), int(step)))
    return np.random.default_rng(seq)

  def to_hex(self) -> str:
    """The entropy as hex (for the checkpoint only)."""
    return format(self.entropy, "x")

  @classmethod
  def from_hex(cls, text: str) -> "SecretStreams":
    """Inverse of :meth:`to_hex`."""
    return cls(int(text, 16))


__all__ += ["SecretStreams"]
