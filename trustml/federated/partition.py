"""Client partitions of a labelled dataset: natural, IID, Dirichlet label/quantity/cluster skew.

A :class:`Partition` maps each client to the row indices it owns in every split (``train`` and
``test`` at least). Synthetic partitions are deterministic from ``seed`` and *consistent across
splits*: a client's label mix (or share, or cluster mix) is drawn once and used to fill its rows in
every split, so a client's test data looks like its train data.

* :func:`natural` -- one client per value of a natural id column (users, speakers).
* :func:`iid` -- a uniform random split into equal-size clients.
* :func:`dirichlet_label` -- label skew ``q_k ~ Dir(alpha * p)``; by default FedNLP's own
  procedure (per split, proportional refill, last client takes the remainder), or trustml's
  split-consistent variant (``procedure="consistent"``).
* :func:`quantity_skew` -- client shares ``~ Dir(beta * 1)``; labels IID.
* :func:`cluster_skew` -- ``sklearn.cluster.KMeans`` on sentence embeddings, cluster id as pseudo-label, then
  :func:`dirichlet_label` on the pseudo-labels.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn import cluster

from trustml.core import rng as rng_lib
from trustml.core import validation


@dataclasses.dataclass(frozen=True)
class Partition:
  """Client -> row indices per split.

  Attributes:
    client_ids: ``[K]`` int ids of the clients (natural ids, or ``0..K-1``).
    indices: split name -> list of ``K`` int64 arrays of row indices into that split.
    kind: how the partition was made (``"natural"``, ``"iid"``, ``"dirichlet"``, ...).
    params: the parameters that made it (alpha, beta, seed, ...).
  """

  client_ids: np.ndarray
  indices: Mapping[str, Sequence[np.ndarray]]
  kind: str
  params: Mapping[str, object] = dataclasses.field(default_factory=dict)

  @property
  def num_clients(self) -> int:
    """Number of clients."""
    return len(self.client_ids)

  def sizes(self, split: str = "train") -> np.ndarray:
    """Examples per client in ``split`` (int64 ``[K]``)."""
    return np.array([len(ix) for ix in self.indices[split]], dtype=np.int64)


def _label_entropy(labels: np.ndarray, num_classes: int) -> float:
  if len(labels) == 0:
    return 0.0
  p = np.bincount(labels, minlength=num_classes) / len(labels)
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


def statistics(
  partition: Partition, labels: np.ndarray | None = None, split: str = "train", bins: int = 10
) -> dict[str, object]:
  """Partition statistics: size histogram and per-client label entropy.

  Args:
    partition: the partition.
    labels: labels of ``split`` (int ``[N]``), or ``None`` to skip entropy.
    split: which split to describe.
    bins: histogram bins of client sizes.

  Returns:
    A JSON-friendly dict: ``num_clients``, ``size_mean/min/max``, ``size_histogram`` (counts and
    edges), ``empty_clients`` and, with labels, ``label_entropy_mean`` (nats), per-client
    ``label_entropy`` and ``global_label_entropy``.
  """
  sizes = partition.sizes(split)
  counts, edges = np.histogram(sizes, bins=bins)
  out: dict[str, object] = {
    "num_clients": int(partition.num_clients),
    "size_mean": float(sizes.mean()) if len(sizes) else 0.0,
    "size_min": int(sizes.min()) if len(sizes) else 0,
    "size_max": int(sizes.max()) if len(sizes) else 0,
    "empty_clients": int((sizes == 0).sum()),
    "size_histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
  }
  if labels is not None:
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if len(labels) else 1
    ent = [_label_entropy(labels[ix], num_classes) for ix in partition.indices[split]]
    out["label_entropy"] = [float(e) for e in ent]
    out["label_entropy_mean"] = float(np.mean(ent)) if ent else 0.0
    out["global_label_entropy"] = _label_entropy(labels, num_classes)
  return out


def natural(ids_by_split: Mapping[str, np.ndarray], *, min_examples: int = 1) -> Partition:
  """One client per natural id (user, speaker) present in the train split.

  Args:
    ids_by_split: split -> int id per row (``-1`` = no id, dropped). Must contain ``"train"``.
    min_examples: keep only ids with at least this many train rows.

  Returns:
    A partition whose clients are the kept train ids; other splits get the rows of those ids
    (possibly none).

  Raises:
    ConfigError: if ``min_examples < 1`` or no id has enough rows.
  """
  validation.positive_int("partition.min_examples", min_examples)
  train_ids = np.asarray(ids_by_split["train"])
  uniq, counts = np.unique(train_ids[train_ids >= 0], return_counts=True)
  keep = uniq[counts >= min_examples]
  if len(keep) == 0:
    raise validation.ConfigError(
      f"partition.min_examples={min_examples} is invalid: no client has that many train rows"
    )
  indices = {}
  for split, ids in ids_by_split.items():
    ids = np.asarray(ids)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    lo = np.searchsorted(sorted_ids, keep, side="left")
    hi = np.searchsorted(sorted_ids, keep, side="right")
    indices[split] = [np.sort(order[a:b]).astype(np.int64) for a, b in zip(lo, hi, strict=True)]
  return Partition(keep.astype(np.int64), indices, "natural", {"min_examples": min_examples})


def _check_clients(num_clients: int, sizes: Mapping[str, int]) -> None:
  validation.positive_int("partition.num_clients", num_clients)
  n = sizes.get("train", 0)
  if num_clients > n:
    raise validation.ConfigError(
      f"partition.num_clients={num_clients} is invalid: must be <= the {n} train examples "
      "(an empty client is not allowed)"
    )


def _equal_sizes(n: int, k: int) -> np.ndarray:
  sizes = np.full(k, n // k, dtype=np.int64)
  sizes[: n % k] += 1
  return sizes


def iid(num_rows: Mapping[str, int], num_clients: int, *, seed: int) -> Partition:
  """Uniformly random equal-size clients in every split.

  Args:
    num_rows: split -> number of rows.
    num_clients: number of clients ``K``.
    seed: partition seed.

  Returns:
    The partition (client ``k`` gets ``n // K`` or ``n // K + 1`` rows of each split).

  Raises:
    ConfigError: if ``num_clients`` is not positive or exceeds the train rows.
  """
  _check_clients(num_clients, num_rows)
  indices = {}
  for split, n in num_rows.items():
    perm = rng_lib.numpy_rng(seed, f"partition/iid/{split}").permutation(n)
    bounds = np.cumsum(_equal_sizes(n, num_clients))[:-1]
    indices[split] = [np.sort(ix).astype(np.int64) for ix in np.split(perm, bounds)]
  return Partition(np.arange(num_clients), indices, "iid", {"seed": seed})


def _fill_by_label(
  labels: np.ndarray, mixes: np.ndarray, sizes: np.ndarray, gen: np.random.Generator
) -> list[np.ndarray]:
  """Fills clients label by label to their target mixes, back-filling exhausted labels."""
  num_classes = mixes.shape[1]
  pools = [gen.permutation(np.flatnonzero(labels == c)).tolist() for c in range(num_classes)]
  out = []
  for k in range(len(sizes)):
    want = np.floor(mixes[k] * sizes[k]).astype(np.int64)
    # Largest-remainder rounding so the targets sum to the client size.
    short = int(sizes[k] - want.sum())
    if short > 0:
      rem = mixes[k] * sizes[k] - want
      want[np.argsort(-rem, kind="stable")[:short]] += 1
    taken: list[int] = []
    for c in range(num_classes):
      m = min(int(want[c]), len(pools[c]))
      taken.extend(pools[c][:m])
      del pools[c][:m]
    # Back-fill from the labels the client prefers most among those still available.
    deficit = int(sizes[k]) - len(taken)
    for c in np.argsort(-mixes[k], kind="stable"):
      if deficit <= 0:
        break
      m = min(deficit, len(pools[c]))
      taken.extend(pools[c][:m])
      del pools[c][:m]
      deficit -= m
    out.append(np.sort(np.asarray(taken, dtype=np.int64)))
  return out


DIRICHLET_PROCEDURES = ("fednlp", "consistent")


def _fednlp_batch_fill(
  used: np.ndarray, pools: Sequence[np.ndarray], room: int, current: int
) -> dict[int, int]:
  """FedNLP's ``dynamic_batch_fill``: how many rows each other label gives to fill ``room``.

  The labels other than ``current`` give in proportion to what they have left (ceil, smallest
  remainders first), then a second pass spreads what is still unfilled the same way.
  """
  remain = {c: (0 if c == current else len(pools[c]) - int(used[c])) for c in range(len(pools))}
  total = sum(v for v in remain.values() if v > 0)
  if total <= 0:
    return {c: max(v, 0) for c, v in remain.items()}
  order = sorted(remain, key=lambda c: remain[c])  # stable: ties keep label order
  original = dict(remain)
  offset: dict[int, int] = {}
  pointer = room
  for c in order:
    fill = min(math.ceil(original[c] / total * room), remain[c])
    if pointer - fill <= 0:
      offset[c] = pointer
      pointer = 0
      break
    pointer -= fill
    remain[c] -= fill
    offset[c] = fill
  if pointer > 0:
    for c in order:
      fill = min(math.ceil(original[c] / total * pointer), remain[c])
      if pointer - fill <= 0:
        offset[c] += pointer
        pointer = 0
        break
      pointer -= fill
      remain[c] -= fill
      offset[c] += fill
  return offset


def _fednlp_label_skew(
  labels: np.ndarray, num_classes: int, num_clients: int, alpha: float, gen: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray]:
  """FedNLP's ``label_skew_process`` (FedML-AI/FedNLP ``data/advanced_partition/niid_label.py``).

  Client sizes ``int(N / K)``, the last client takes the remainder; each client draws its mix
  ``q_k ~ Dir(alpha * p)`` and takes ``round(q_kc * size)`` rows of each label in label order
  (the last label takes what is left of the size); a label that runs out is made up by the
  other labels in proportion to what they have left (:func:`_fednlp_batch_fill`); the last
  client also takes every row still unused.
  """
  n = len(labels)
  prior = np.bincount(labels, minlength=num_classes) / max(n, 1)
  pools = [gen.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
  used = np.zeros(num_classes, dtype=np.int64)
  conc = np.maximum(alpha * prior, 1e-12)
  per_client, total = n // num_clients, n
  out, mixes = [], []
  for k in range(num_clients):
    q = _stable_dirichlet(gen, conc)
    mixes.append(q)
    size = min(per_client, total)
    if total < 2 * size:
      size = total
    total -= size
    pointer = size
    taken: list[np.ndarray] = []
    for c in range(num_classes):
      want = round(float(q[c]) * size)
      if want >= pointer:
        want, pointer = pointer, 0
      else:
        if c == num_classes - 1:
          want = pointer
        pointer -= want
      start, end = int(used[c]), int(used[c]) + want
      if end > len(pools[c]):
        taken.append(pools[c][start:])
        used[c] = len(pools[c])
        for f, m in _fednlp_batch_fill(used, pools, end - len(pools[c]), c).items():
          taken.append(pools[f][used[f] : used[f] + m])
          used[f] += m
      else:
        taken.append(pools[c][start:end])
        used[c] = end
    if k == num_clients - 1:
      for c in range(num_classes):
        taken.append(pools[c][used[c] :])
        used[c] = len(pools[c])
    out.append(np.sort(np.concatenate(taken)).astype(np.int64))
  return out, np.stack(mixes)


def dirichlet_label(
  labels_by_split: Mapping[str, np.ndarray],
  num_clients: int,
  alpha: float,
  *,
  seed: int,
  procedure: str = "fednlp",
) -> Partition:
  """Dirichlet label skew ``q_k ~ Dir(alpha * p)`` (``p``: the split's label prior).

  ``procedure="fednlp"`` (default) is FedNLP's ``label_skew_process`` run on each split on its
  own, as FedNLP does (:func:`_fednlp_label_skew`): sizes ``int(N / K)`` with the remainder on
  the last client, proportional refill of exhausted labels, and fresh mixes for the test split
  (so a client's test mix is *not* its train mix). ``procedure="consistent"`` is trustml's
  earlier variant: one mix per client (from the train prior) used for every split, equal
  sizes (``N // K`` or ``+1``), largest-remainder rounding and a greedy refill from the
  client's next-preferred label. Large ``alpha`` approaches IID; small ``alpha`` gives each
  client (nearly) one label.

  Args:
    labels_by_split: split -> int labels ``[N_split]``; must contain ``"train"``.
    num_clients: number of clients ``K``.
    alpha: Dirichlet concentration, > 0.
    seed: partition seed.
    procedure: ``"fednlp"`` or ``"consistent"``.

  Returns:
    The partition; ``params["mixes"]`` holds the ``[K, C]`` train label mixes.

  Raises:
    ConfigError: if ``alpha <= 0``, ``num_clients`` is invalid or the procedure is unknown.
  """
  validation.positive("partition.alpha", alpha)
  validation.one_of("partition.dirichlet_procedure", procedure, DIRICHLET_PROCEDURES)
  _check_clients(num_clients, {s: len(v) for s, v in labels_by_split.items()})
  train = np.asarray(labels_by_split["train"], dtype=np.int64)
  num_classes = int(max(np.max(v) for v in labels_by_split.values() if len(v))) + 1
  indices = {}
  params: dict[str, object] = {"alpha": float(alpha), "seed": seed, "procedure": procedure}
  if procedure == "fednlp":
    for split, labels in labels_by_split.items():
      gen = rng_lib.numpy_rng(seed, f"partition/dirichlet_fednlp/{split}")
      indices[split], mixes = _fednlp_label_skew(
        np.asarray(labels, dtype=np.int64), num_classes, num_clients, alpha, gen
      )
      if split == "train":
        params["mixes"] = mixes.tolist()
    return Partition(np.arange(num_clients), indices, "dirichlet", params)
  prior = np.bincount(train, minlength=num_classes) / len(train)
  gen = rng_lib.numpy_rng(seed, "partition/dirichlet")
  conc = np.maximum(alpha * prior, 1e-12)
  mixes = np.stack([_stable_dirichlet(gen, conc) for _ in range(num_clients)])
  for split, labels in labels_by_split.items():
    labels = np.asarray(labels, dtype=np.int64)
    split_gen = rng_lib.numpy_rng(seed, f"partition/dirichlet/{split}")
    indices[split] = _fill_by_label(
      labels, mixes, _equal_sizes(len(labels), num_clients), split_gen
    )
  params["mixes"] = mixes.tolist()
  return Partition(np.arange(num_clients), indices, "dirichlet", params)


def _stable_dirichlet(gen: np.random.Generator, conc: np.ndarray) -> np.ndarray:
  """Dir(conc) that stays finite for tiny concentrations (via log-gamma draws)."""
  # For small a, Gamma(a) underflows to 0; log G = log U / a + log Gamma(a + 1) is stable.
  log_g = np.log(gen.gamma(conc + 1.0)) + np.log(gen.uniform(size=conc.shape)) / conc
  log_g -= log_g.max()
  g = np.exp(log_g)
  return g / g.sum()


def quantity_skew(
  num_rows: Mapping[str, int], num_clients: int, beta: float, *, seed: int
) -> Partition:
  """Client shares ``~ Dir(beta * 1)`` (at least one train row each); rows IID.

  Args:
    num_rows: split -> number of rows.
    num_clients: number of clients ``K``.
    beta: Dirichlet concentration of the shares, > 0 (small = very unequal sizes).
    seed: partition seed.

  Returns:
    The partition; ``params["shares"]`` holds the ``[K]`` shares, used for every split.

  Raises:
    ConfigError: if ``beta <= 0`` or ``num_clients`` is invalid.
  """
  validation.positive("partition.beta", beta)
  _check_clients(num_clients, num_rows)
  gen = rng_lib.numpy_rng(seed, "partition/quantity")
  shares = _stable_dirichlet(gen, np.full(num_clients, float(beta)))
  indices = {}
  for split, n in num_rows.items():
    floor = 1 if n >= num_clients else 0
    extra = n - floor * num_clients
    sizes = np.floor(shares * extra).astype(np.int64)
    rem = shares * extra - sizes
    sizes[np.argsort(-rem, kind="stable")[: extra - sizes.sum()]] += 1
    sizes += floor
    perm = rng_lib.numpy_rng(seed, f"partition/quantity/{split}").permutation(n)
    indices[split] = [np.sort(ix).astype(np.int64) for ix in np.split(perm, np.cumsum(sizes)[:-1])]
  return Partition(
    np.arange(num_clients),
    indices,
    "quantity",
    {"beta": beta, "seed": seed, "shares": shares.tolist()},
  )


def _kmeans(x: np.ndarray, k: int, *, seed: int) -> cluster.KMeans:
  """``sklearn.cluster.KMeans`` (k-means++ seeding, 10 restarts) fitted on ``x``."""
  x = validation.finite_array("partition embeddings", x, ndim=2)
  validation.positive_int("partition.num_clusters", k)
  if k > len(x):
    raise validation.ConfigError(
      f"partition.num_clusters={k} is invalid: must be <= {len(x)} points"
    )
  state = int(rng_lib.numpy_rng(seed, "partition/kmeans").integers(2**31 - 1))
  return cluster.KMeans(n_clusters=k, n_init=10, random_state=state).fit(x)


def cluster_skew(
  embeddings_by_split: Mapping[str, np.ndarray],
  num_clients: int,
  alpha: float,
  *,
  num_clusters: int,
  seed: int,
) -> Partition:
  """Cluster skew: k-means on train embeddings, nearest centroid for other splits, then Dirichlet.

  Args:
    embeddings_by_split: split -> sentence embeddings ``[N_split, D]``.
    num_clients: number of clients.
    alpha: Dirichlet concentration over pseudo-labels, > 0.
    num_clusters: k of k-means.
    seed: partition seed.

  Returns:
    The partition (``kind="cluster"``), ``params["pseudo_labels"]`` per split.

  Raises:
    ConfigError: on invalid ``alpha``, ``num_clients`` or ``num_clusters``.
  """
  validation.positive("partition.alpha", alpha)
  km = _kmeans(embeddings_by_split["train"], num_clusters, seed=seed)
  pseudo = {}
  for split, emb in embeddings_by_split.items():
    emb = validation.finite_array(f"partition embeddings ({split})", emb, ndim=2)
    pseudo[split] = km.predict(emb).astype(np.int64)
  base = dirichlet_label(pseudo, num_clients, alpha, seed=seed)
  params = dict(
    base.params, num_clusters=num_clusters, pseudo_labels={k: v.tolist() for k, v in pseudo.items()}
  )
  return Partition(base.client_ids, base.indices, "cluster", params)


__all__ = [
  "DIRICHLET_PROCEDURES",
  "Partition",
  "cluster_skew",
  "dirichlet_label",
  "iid",
  "natural",
  "quantity_skew",
  "statistics",
]
