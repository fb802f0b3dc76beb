"""SCAFFOLD (option II) against a float64 NumPy transcription of Karimireddy et al. 2020, Alg. 1.

Clients of unequal size (2 to 17 rows, so 1 to 8 local steps) and a population N larger than the
cohort |S|: the server control update must be ``c <- c + |S|/N * mean_{i in S} dc_i`` (uniform
over the sampled clients), not a size-weighted mean; the model update is
``x <- x + eta_g * sum_i w_i dy_i / sum_i w_i`` (the paper's uniform mean with ``w_i = 1``).
"""

import fed_tiny_model
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trustml.federated import algorithms, packing

MODEL = fed_tiny_model.model()
PARAMS = MODEL.init(jax.random.key(0), None)
ARR = fed_tiny_model.arrays(300, seed=1)
ROWS = [np.arange(i * 30, i * 30 + 2 + 3 * i) for i in range(6)]  # sizes 2, 5, ..., 17
SIZES = np.array([len(r) for r in ROWS], np.float64)
N_POP = 10  # population size N > |S| = 6
LR, ETA_G = 0.3, 0.7


def _np_grad(p: dict, b: dict) -> dict:
  """Float64 gradient of sum_b w_b nll_b / sum_b w_b for the tiny mean-pooled softmax model."""
  emb, kern, bias = p["embed"]["embedding"], p["head"]["kernel"], p["head"]["bias"]
  m = b["mask"].astype(np.float64)
  cnt = np.maximum(m.sum(1), 1.0)
  pooled = (emb[b["tokens"]] * m[..., None]).sum(1) / cnt[:, None]
  logits = pooled @ kern + bias
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  onehot = np.eye(kern.shape[1])[b["label"]]
  w = b["weight"].astype(np.float64)
  dlogits = (prob - onehot) * (w / max(w.sum(), 1e-9))[:, None]
  dpooled = dlogits @ kern.T
  demb = np.zeros_like(emb)
  np.add.at(demb, b["tokens"], (m / cnt[:, None])[..., None] * dpooled[:, None, :])
  return {
    "embed": {"embedding": demb},
    "head": {"kernel": pooled.T @ dlogits, "bias": dlogits.sum(0)},
  }


def _tmap(f, *trees):
  return jax.tree.map(f, *trees)


def _np_scaffold_round(x, c, c_clients, packed, control_mean: str):
  """One SCAFFOLD round (Alg. 1, option II) in float64 NumPy.

  Args:
    x: server model; c: server control; c_clients: list of client controls (sampled clients).
    packed: the packed round (its batches, step masks and aggregation weights).
    control_mean: ``"uniform"`` (the paper) or ``"size"`` (the alternative the test rejects).

  Returns:
    ``(x_new, c_new, new client controls)``.
  """
  dys, dcs, new_cs = [], [], []
  for i, ci in enumerate(c_clients):
    y = x
    k = int(packed["step_mask"][i].sum())
    for s in range(k):
      b = {key: np.asarray(v[i, s]) for key, v in packed["batch"].items()}
      g = _np_grad(y, b)
      y = _tmap(lambda yy, gg, cc, cci: yy - LR * (gg + cc - cci), y, g, c, ci)
    # Option II: c_i+ = c_i - c + (x - y_i) / (K lr).
    ci_new = _tmap(lambda cci, cc, xx, yy, k=k: cci - cc + (xx - yy) / (k * LR), ci, c, x, y)
    dys.append(_tmap(np.subtract, y, x))
    dcs.append(_tmap(np.subtract, ci_new, ci))
    new_cs.append(ci_new)
  w = np.asarray(packed["weight"][: len(c_clients)], np.float64)
  x_new = _tmap(
    lambda xx, *d: xx + ETA_G * sum(wi * di for wi, di in zip(w, d, strict=True)) / w.sum(), x, *dys
  )
  if control_mean == "uniform":  # c <- c + |S|/N * (1/|S|) sum_i dc_i
    cw = np.full(len(dcs), 1.0 / len(dcs))
  else:  # size-weighted mean of the dc_i (scaled by |S|/N)
    cw = SIZES / SIZES.sum()
  scale = len(dcs) / N_POP
  c_new = _tmap(
    lambda cc, *d: cc + scale * sum(a * di for a, di in zip(cw, d, strict=True)), c, *dcs
  )
  return x_new, c_new, new_cs


def _f64(tree):
  return _tmap(lambda a: np.asarray(a, np.float64), tree)


def _max_diff(a, b) -> float:
  return max(
    float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


@pytest.mark.parametrize("weighting", ["uniform", "num_examples"])
def test_scaffold_equals_numpy_reference_of_the_paper(weighting):
  alg = algorithms.scaffold(MODEL, client_learning_rate=LR, server_learning_rate=ETA_G)
  weights = np.ones(len(ROWS)) if weighting == "uniform" else SIZES
  gen = np.random.default_rng(0)
  c_clients = [
    _tmap(lambda a: np.float32(0.05) * gen.normal(size=a.shape).astype(np.float32), PARAMS)
    for _ in range(len(ROWS) + 2)
  ]
  state = alg.init(PARAMS)
  x, c = _f64(PARAMS), _tmap(lambda a: np.zeros(a.shape), PARAMS)
  ref = {"uniform": (x, c, c_clients[: len(ROWS)]), "size": (x, c, c_clients[: len(ROWS)])}
  for r in range(2):  # the second round uses the server control of the first
    p = packing.device_arrays(
      packing.pack(
        ARR, ROWS, batch_size=2, local_epochs=1, weights=weights, client_multiple=4, round_index=r
      )
    )
    assert len(set(p["step_mask"].sum(1)[: len(ROWS)])) == len(ROWS)  # unequal K_i
    old_pad = _tmap(lambda *cs: cs[len(ROWS)], *c_clients)
    p["control"] = _tmap(lambda *cs: jnp.asarray(np.stack(cs), jnp.float32), *c_clients)
    p["scalars"] = {"control_scale": 1.0 / N_POP}
    state, diag = alg.apply(state, p, jax.random.key(r))
    ref = {k: _np_scaffold_round(*v[:2], v[2], p, k) for k, v in ref.items()}
    new_clients = _tmap(np.asarray, diag["clients"]["control"])
    c_clients = [_tmap(lambda a, i=i: a[i], new_clients) for i in range(len(ROWS) + 2)]
    x_ref, c_ref, cs_ref = ref["uniform"]
    assert _max_diff(state.params, x_ref) < 1e-5
    assert _max_diff(state.control, c_ref) < 1e-6
    for i in range(len(ROWS)):
      assert _max_diff(c_clients[i], cs_ref[i]) < 1e-4
    # Padding clients keep their (zero-weight) control unchanged.
    assert _max_diff(c_clients[len(ROWS)], old_pad) == 0.0
    # The test has power: a size-weighted control mean is far outside the tolerance.
    assert _max_diff(state.control, ref["size"][1]) > 100 * 1e-6
