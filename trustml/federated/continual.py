"""Continual federated learning: time periods, per-client arrivals and bounded client storage.

Each example of a client gets an arrival period ``t in 0..T-1``. Arrivals follow the data's own
order per user (``process="sequential"``: the ``k``-th of a client's ``n_i`` rows arrives in
period ``floor(T k / n_i)``, so heavy users receive more per period: heterogeneous rates), or a
configurable random process (``process="random"``: each row's period drawn uniformly; or
``process="staggered"``: client ``i`` joins at a random period and its rows spread over the
remaining periods). Each client keeps at most ``cap`` rows; when new rows arrive the deletion
policy decides what is dropped:

* ``drop_oldest``: first in, first out, row by row: exactly ``len(stored) + len(new) - cap`` of
  the oldest rows are dropped, none while everything fits;
* ``drop_previous_period``: deletion at the granularity of a period (like deleting a day's log
  file): while the stored and new rows do not fit, the whole oldest stored period is deleted;
  if the new period alone exceeds the cap, its newest ``cap`` rows are kept. No row is dropped
  while everything fits, but once something must go a whole period goes, so a client may store
  fewer than ``cap`` rows (e.g. cap 5, four rows of period 0, then two of period 1: period 0 is
  deleted and 2 rows remain, where ``drop_oldest`` keeps 5);
* ``reservoir``: reservoir sampling (Vitter's algorithm R) over everything the client has seen,
  so the stored set is a uniform sample of its history.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from trustml.core import rng as rng_lib
from trustml.core import validation

POLICIES = ("drop_oldest", "drop_previous_period", "reservoir")
PROCESSES = ("sequential", "random", "staggered")


def arrival_periods(
  client_rows: Sequence[np.ndarray], num_periods: int, *, process: str = "sequential", seed: int = 0
) -> list[np.ndarray]:
  """The arrival period of every row of every client.

  Args:
    client_rows: row indices per client (in the data's order).
    num_periods: ``T`` >= 1.
    process: ``"sequential"``, ``"random"`` or ``"staggered"``.
    seed: seed of the random processes.

  Returns:
    One int64 array per client, aligned with ``client_rows``, values in ``[0, T)``.

  Raises:
    ConfigError: on ``T < 1`` or an unknown process.
  """
  validation.positive_int("continual.num_periods", num_periods)
  validation.one_of("continual.process", process, PROCESSES)
  gen = rng_lib.numpy_rng(seed, "continual/arrivals")
  out = []
  for rows in client_rows:
    n = len(rows)
    if process == "sequential":
      out.append((np.arange(n) * num_periods // max(n, 1)).astype(np.int64))
    elif process == "random":
      out.append(np.sort(gen.integers(0, num_periods, size=n)).astype(np.int64))
    else:
      start = int(gen.integers(0, num_periods))
      out.append((start + np.arange(n) * (num_periods - start) // max(n, 1)).astype(np.int64))
  return out


@dataclasses.dataclass
class ClientStore:
  """Bounded storage of one client.

  Attributes:
    cap: maximum number of stored rows (>= 1).
    policy: deletion policy in :data:`POLICIES`.
    rows: stored row indices.
    periods: arrival period of each stored row.
    seen: rows offered so far (reservoir sampling needs it).
  """

  cap: int
  policy: str
  rows: list[int] = dataclasses.field(default_factory=list)
  periods: list[int] = dataclasses.field(default_factory=list)
  seen: int = 0

  def add(self, rows: Sequence[int], period: int, gen: np.random.Generator) -> None:
    """Offers the rows arriving in ``period``; afterwards ``len(self.rows) <= cap``."""
    rows = [int(r) for r in rows]
    if self.policy == "reservoir":
      for r in rows:
        self.seen += 1
        if len(self.rows) < self.cap:
          self.rows.append(r)
          self.periods.append(period)
        else:
          j = int(gen.integers(0, self.seen))
          if j < self.cap:
            self.rows[j] = r
            self.periods[j] = period
      return
    self.seen += len(rows)
    if self.policy == "drop_previous_period":
      while self.rows and len(self.rows) + len(rows) > self.cap:
        oldest = self.periods[0]
        k = next((i for i, p in enumerate(self.periods) if p != oldest), len(self.periods))
        self.rows, self.periods = self.rows[k:], self.periods[k:]
    self.rows.extend(rows)
    self.periods.extend([period] * len(rows))
    if len(self.rows) > self.cap:
      drop = len(self.rows) - self.cap
      self.rows = self.rows[drop:]
      self.periods = self.periods[drop:]


class Storage:
  """The bounded stores of all clients of a population.

  Example:
    >>> storage = Storage(num_clients=3, cap=10, policy="reservoir", seed=0)
    >>> storage.ingest(client_rows, periods, period=0)
    >>> storage.sizes()
  """

  def __init__(self, num_clients: int, cap: int, policy: str, seed: int = 0):
    """Creates empty stores.

    Raises:
      ConfigError: on ``cap < 1`` or an unknown policy.
    """
    validation.positive_int("continual.storage_cap", cap)
    validation.one_of("continual.deletion_policy", policy, POLICIES)
    self.cap = cap
    self.policy = policy
    self.seed = seed
    self.stores = [ClientStore(cap, policy) for _ in range(num_clients)]

  def ingest(
    self, client_rows: Sequence[np.ndarray], periods: Sequence[np.ndarray], period: int
  ) -> int:
    """Offers every client its rows arriving in ``period``; returns how many rows arrived."""
    total = 0
    for i, (rows, per) in enumerate(zip(client_rows, periods, strict=True)):
      new = np.asarray(rows)[np.asarray(per) == period]
      gen = rng_lib.numpy_rng(self.seed, "continual/reservoir", period * 1_000_003 + i)
      self.stores[i].add(new, period, gen)
      total += len(new)
    return total

  def sizes(self) -> np.ndarray:
    """Stored rows per client (int64 ``[K]``)."""
    return np.array([len(s.rows) for s in self.stores], dtype=np.int64)

  def rows(self) -> list[np.ndarray]:
    """Stored row indices per client."""
    return [np.asarray(s.rows, dtype=np.int64) for s in self.stores]

  def state_dict(self) -> dict:
    """JSON-friendly state for exact resume."""
    return {"stores": [{"rows": s.rows, "periods": s.periods, "seen": s.seen} for s in self.stores]}

  def load_state_dict(self, state: dict) -> None:
    """Restores :meth:`state_dict`."""
    for s, d in zip(self.stores, state["stores"], strict=True):
      s.rows, s.periods, s.seen = list(d["rows"]), list(d["periods"]), int(d["seen"])


def rows_in_periods(
  client_rows: Sequence[np.ndarray], periods: Sequence[np.ndarray], wanted: Sequence[int]
) -> np.ndarray:
  """All rows (across clients) whose arrival period is in ``wanted`` (for forward/forgetting eval)."""
  parts = [
    np.asarray(r)[np.isin(p, list(wanted))] for r, p in zip(client_rows, periods, strict=True)
  ]
  return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


__all__ = ["POLICIES", "PROCESSES", "ClientStore", "Storage", "arrival_periods", "rows_in_periods"]
