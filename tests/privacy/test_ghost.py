"""Ghost clipping oracles: eDP clipped sum == naive vmap(grad) clipped sum in float64.

Every rule of :mod:`trustml.privacy.ghost_rules` is exercised on a small Flax model (flat and
per-layer clipping, with a padding row and clip norms that clip most examples), plus the
residual path (raw ``self.param`` read directly and broadcast, a layer called without a batch
axis, a layer with no rule), which must be exact too and warn with the leaf's name.
"""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from trustml.models import registry
from trustml.privacy import clipping, ghost, ghost_broadcast, per_example
from trustml.privacy import ghost_rules as rules

B, T, V, C, D = 5, 6, 11, 3, 8


def _batch(seed=0, size=B):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, T + 1, size)
  mask = np.arange(T)[None] < lengths[:, None]
  tokens = np.where(mask, rng.integers(1, 5, (size, T)), 0)  # Few ids: repeated tokens.
  weight = np.ones(size, np.float32)
  weight[1] = 0.0  # A padding row.
  return {
    "tokens": jnp.asarray(tokens, jnp.int32),
    "mask": jnp.asarray(mask),
    "label": jnp.asarray(rng.integers(0, C, size), jnp.int32),
    "weight": jnp.asarray(weight),
  }


class RawParams(nn.Module):
  """Positions and a scale as raw params, a shared Dense, a position Embed without batch axis."""

  @nn.compact
  def __call__(self, tokens, mask):
    t = tokens.shape[1]
    x = nn.Embed(V, D, name="embed")(tokens)
    pos = self.param("pos", nn.initializers.normal(1.0), (T + 2, D))
    x = x + pos[None, :t]
    x = x + nn.Embed(T, D, name="pos_embed")(jnp.arange(t))  # No batch axis: residual.
    x = x * self.param("scale", nn.initializers.normal(1.0), (D,))
    mix = nn.Dense(D, name="mix")
    x = mix(nn.tanh(mix(x)))  # One module, two calls.
    x = nn.PReLU(name="prelu")(x)  # No rule: residual.
    m = mask[..., None].astype(x.dtype)
    pooled = (x * m).sum(1) / m.sum(1)
    return nn.Dense(C, name="head")(pooled) + self.param("b", nn.initializers.normal(1.0), (C,))


class Layers(nn.Module):
  """Attention (DenseGeneral projections), Einsum, DenseGeneral, RMSNorm, LayerNorm."""

  @nn.compact
  def __call__(self, tokens, mask):
    x = nn.Embed(V, D, name="embed")(tokens)
    x = nn.RMSNorm(name="rms")(x)
    att = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=D, name="mha")
    x = x + att(x, mask=nn.make_attention_mask(mask, mask))
    x = nn.LayerNorm(name="ln")(x)
    x = nn.Einsum((D, 2, 3), "btd,dhk->bthk", name="einsum")(x)
    x = nn.gelu(x)
    x = nn.DenseGeneral((2, 2), axis=(-2, -1), name="dense_general")(x)
    x = x.reshape(x.shape[:2] + (4,))
    m = mask[..., None].astype(x.dtype)
    return nn.Dense(C, name="head")((x * m).sum(1))


class Convs(nn.Module):
  """1-D convolutions (causal, strided and dilated) and a 2-D convolution."""

  @nn.compact
  def __call__(self, tokens, mask):
    x = nn.Embed(V, D, name="embed")(tokens) * mask[..., None]
    a = nn.relu(nn.Conv(4, (3,), padding="CAUSAL", name="causal")(x))
    b = nn.relu(nn.Conv(4, (2,), strides=2, padding="VALID", kernel_dilation=2, name="strided")(x))
    c = nn.relu(nn.Conv(2, (2, 3), padding="SAME", name="image")(x[..., None]))
    feats = jnp.concatenate([a.max(1), b.max(1), c.max((1, 2))], -1)
    return nn.Dense(C, name="head")(feats)


class GroupedConvs(nn.Module):
  """Feature groups: depthwise 1-D (dilated), two groups strided 1-D, grouped 2-D."""

  @nn.compact
  def __call__(self, tokens, mask):
    x = nn.Embed(V, D, name="embed")(tokens) * mask[..., None]
    dw = nn.Conv(D, (3,), feature_group_count=D, kernel_dilation=2, name="depthwise")(x)
    g2 = nn.Conv(4, (2,), strides=2, padding="VALID", feature_group_count=2, name="two")(x)
    y = jnp.concatenate([x[..., :2], x[..., :2]], -1)[..., None]  # [B, T, 4, 1] "image".
    im = nn.Conv(2, (2, 3), padding="SAME", feature_group_count=1, name="image")(y)
    y2 = jnp.broadcast_to(y, y.shape[:-1] + (2,))
    im2 = nn.Conv(4, (2, 2), strides=(1, 2), feature_group_count=2, name="image_groups")(y2)
    feats = jnp.concatenate(
      [nn.relu(dw).max(1), nn.relu(g2).max(1), im.max((1, 2)), nn.relu(im2).max((1, 2))], -1
    )
    return nn.Dense(C, name="head")(feats)


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return x + nn.Dense(x.shape[-1], name="mlp")(nn.LayerNorm(name="ln")(x)), None


class Nested(nn.Module):
  """Layers inside nested transforms: ``nn.scan`` over blocks, ``nn.remat``, an ``nn.RNN``.

  No layer rule sees into them (their calls run under an inner trace); the jaxpr walker does:
  the scans are interpreted iteration by iteration (the stacked blocks' kernels are kernel
  sites per row, the GRU's kernels one kernel site per time step, the norms' scales and the
  biases broadcast sites), the remat body inside ``jax.checkpoint``."""

  @nn.compact
  def __call__(self, tokens, mask):
    x = nn.Embed(V, D, name="embed")(tokens) * mask[..., None]
    scan = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
    x, _ = scan(name="blocks")(x, None)
    x, _ = nn.remat(_Block)(name="remat")(x, None)
    cell = nn.GRUCell(4, param_dtype=x.dtype, name="cell")  # Its carry has the params dtype.
    h = nn.RNN(cell, name="rnn")(x)
    return nn.Dense(C, name="head")(h[:, -1])


class _RnnBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    cell = nn.SimpleCell(x.shape[-1], param_dtype=x.dtype, name="cell")
    return x + nn.RNN(cell, name="rnn")(x), None


class Recurrent(nn.Module):
  """A bidirectional RNN (an LSTM forward, a GRU over the reversed sequence: a reverse scan)
  a raw ``lax.scan(reverse=True)`` recurrence, and an ``nn.scan`` of blocks that each run an RNN (a scan inside a scan, its cell's kernels
  rows of the stacked leaves used at every time step)."""

  @nn.compact
  def __call__(self, tokens, mask):
    x = nn.Embed(V, D, name="embed")(tokens) * mask[..., None]
    fwd = nn.RNN(nn.LSTMCell(4, param_dtype=x.dtype, name="lstm"), name="fwd")
    bwd = nn.RNN(nn.GRUCell(4, param_dtype=x.dtype, name="gru"), name="bwd")
    x = nn.Bidirectional(fwd, bwd, name="bi")(x)
    w = self.param("recur", nn.initializers.normal(0.5), (8, 8))  # A raw reverse lax.scan.

    def step(h, x_t):
      h = jnp.tanh(x_t + h @ w).astype(h.dtype)
      return h, h

    _, hs = jax.lax.scan(step, jnp.zeros_like(x[:, 0]), jnp.swapaxes(x, 0, 1), reverse=True)
    x = x + jnp.swapaxes(hs, 0, 1)
    stack = nn.scan(_RnnBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
    x, _ = stack(name="stack")(x, None)
    return nn.Dense(C, name="head")(x.mean(1))


class Wrapped(nn.Module):
  """A block under ``nn.remat`` and an ``nn.WeightNorm`` Dense: no layer rule sees them (an
  inner trace; a kernel computed from parameters), the jaxpr sites do (kernel products
  expanded per example, norms' scales and biases broadcast)."""

  @nn.compact
  def __call__(self, tokens, mask):
    x = nn.Embed(V, D, name="embed")(tokens) * mask[..., None]
    x, _ = nn.remat(_Block)(name="remat")(x, None)
    x = jnp.tanh(nn.WeightNorm(nn.Dense(D, name="wd"), name="wn")(x))
    return nn.Dense(C, name="head")(x.mean(1))


class Tied(nn.Module):
  """One table: two lookups and two attends (logits), so every cross term is present."""

  @nn.compact
  def __call__(self, tokens, mask):
    embed = nn.Embed(V, D, name="embed")
    x = embed(tokens) + 0.5 * embed(jnp.flip(tokens, 1))
    x = nn.tanh(nn.Dense(D, name="mix")(x))
    states = embed.attend(x)  # [B, T, V]
    pooled = embed.attend(x.mean(1))  # [B, V] (no position axis)
    return states.mean(1)[:, :C] + pooled[:, :C]


class Broadcasts(nn.Module):
  """Raw parameters reaching the examples by every broadcasting form a model may use."""

  @nn.compact
  def __call__(self, tokens, mask):
    t = tokens.shape[1]
    x = nn.Embed(V, D, name="embed")(tokens)
    table = self.param("table", nn.initializers.normal(1.0), (T, D))
    x = x + jnp.broadcast_to(table[:t], x.shape)  # Explicit broadcast_in_dim.
    x = x * jax.nn.softplus(self.param("log_scale", nn.initializers.normal(1.0), (D,)))
    x = jax.jit(jnp.add)(x, self.param("shift", nn.initializers.normal(1.0), (1, 1, D)))
    gain = self.param("gain", nn.initializers.normal(1.0), (D,))
    x = x * gain + gain * self.param("mix", nn.initializers.normal(1.0), (D,))  # Two leaves.
    x = jnp.where(x > 0, x, self.param("floor", nn.initializers.normal(1.0), ()))  # select_n.
    x = x + nn.Dense(D, name="pos_mlp")(table[:t])  # A layer on a position axis (T may == B).
    x = nn.remat(_Shifted)(name="remat")(x)
    m = mask[..., None].astype(x.dtype)
    pooled = (x * m).sum(1) / m.sum(1)
    return nn.Dense(C, name="head")(pooled) / self.param("temp", nn.initializers.ones, ())


class _Shifted(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.tanh(x - self.param("offset", nn.initializers.normal(1.0), (D,)))


class RawDots(nn.Module):
  """Raw kernels in products: ``x @ w``, an einsum with a head axis, the same kernel on the
  left of a second einsum (a dot batch axis first in its output), and a kernel through a
  parameter-only chain (``softplus(g)``) on the left."""

  @nn.compact
  def __call__(self, tokens, mask):
    x = nn.Embed(V, D, name="embed")(tokens) * mask[..., None]
    x = nn.tanh(x @ self.param("kernel", nn.initializers.normal(0.5), (D, D)))
    w = self.param("heads", nn.initializers.normal(0.5), (2, D, 3))
    h = jnp.einsum("btd,hde->bthe", x, w)
    h2 = jnp.einsum("hde,bthe->bthd", w, jnp.tanh(h))
    g = self.param("gate", nn.initializers.normal(0.5), (D, 4))
    y = jnp.einsum("de,btd->bte", jax.nn.softplus(g), h2.sum(2))
    m = mask[..., None].astype(y.dtype)
    return nn.Dense(C, name="head")((y * m).sum(1)) + self.param("b", nn.initializers.zeros, (C,))


class RawKernel(nn.Module):
  """Uses no broadcast covers: a raw kernel in a matmul, a raw table gathered at token ids."""

  @nn.compact
  def __call__(self, tokens, mask):
    x = self.param("table", nn.initializers.normal(1.0), (V, D))[tokens]
    x = nn.tanh(x @ self.param("kernel", nn.initializers.normal(0.5), (D, D)))
    x = x + self.param("pos", nn.initializers.normal(1.0), (T, D))[None, : tokens.shape[1]]
    m = mask[..., None].astype(x.dtype)
    return nn.Dense(C, name="head")((x * m).sum(1))


class RawLookups(nn.Module):
  """Raw tables gathered at example ids in every indexing form: ``table[tokens]`` twice (the
  two lookups' cross terms), ``jnp.take`` at one id per example, ``mode="clip"`` at ids past
  the table's end (clamped), ``mode="fill"`` at them (fill value, gradient 0); and a kernel
  used both in a product and added with broadcasting (one leaf, two kinds of site)."""

  @nn.compact
  def __call__(self, tokens, mask):
    table = self.param("table", nn.initializers.normal(1.0), (V, D))
    x = table[tokens] + 0.5 * table[jnp.flip(tokens, 1)]
    first = self.param("first", nn.initializers.normal(1.0), (V, D))
    x = x + jnp.take(first, tokens[:, 0], axis=0)[:, None]
    past = self.param("past", nn.initializers.normal(1.0), (V - 3, D))  # ids >= V - 3 clamp.
    x = x + jnp.take(past, tokens, axis=0, mode="clip")
    fill = self.param("fill", nn.initializers.normal(1.0), (V - 3, D))
    x = x + jnp.take(fill, tokens, axis=0, mode="fill", fill_value=0.0)
    w = self.param("mixed", nn.initializers.normal(0.5), (D, D))
    x = nn.tanh(x @ w + w[0])
    m = mask[..., None].astype(x.dtype)
    return nn.Dense(C, name="head")((x * m).sum(1))


class _TableBlock(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    table = self.param("table", nn.initializers.normal(1.0), (V, D))
    return jnp.tanh(table[tokens] @ self.param("w", nn.initializers.normal(0.5), (D, D)))


class RematLookup(nn.Module):
  """A raw table lookup and a raw kernel inside a checkpoint body: their ids and input leave
  the body as extra outputs (lookup and kernel sites there)."""

  @nn.compact
  def __call__(self, tokens, mask):
    x = nn.remat(_TableBlock)(name="inner")(tokens) * mask[..., None]
    return nn.Dense(C, name="head")(x.sum(1))


class TableAlsoAdded(nn.Module):
  """A raw table gathered and also used otherwise (its mean added): no rule, the fallback."""

  @nn.compact
  def __call__(self, tokens, mask):
    table = self.param("table", nn.initializers.normal(1.0), (V, D))
    x = nn.tanh(table[tokens] + table.mean(0))
    return nn.Dense(C, name="head")(x.sum(1))


MODULES = {
  "raw": RawParams,
  "broadcasts": Broadcasts,
  "rawkernel": RawKernel,
  "rawdots": RawDots,
  "wrapped": Wrapped,
  "layers": Layers,
  "convs": Convs,
  "grouped_convs": GroupedConvs,
  "nested": Nested,
  "recurrent": Recurrent,
  "rawlookups": RawLookups,
  "tablealsoadded": TableAlsoAdded,
  "rematlookup": RematLookup,
  "tied": Tied,
}
# Leaves on the vmap fallback (warned) and leaves covered by broadcast sites.
_BLOCK_LEAVES = (("mlp", "kernel"), ("mlp", "bias"), ("ln", "scale"), ("ln", "bias"))
_NESTED = {
  *((blk, layer, leaf) for blk in ("blocks", "remat") for layer, leaf in _BLOCK_LEAVES),
  *(("cell", gate, "kernel") for gate in ("ir", "iz", "in", "hr", "hz", "hn")),
  *(("cell", gate, "bias") for gate in ("ir", "iz", "in", "hn")),
}
_RECURRENT = {
  *(("lstm", g, "kernel") for g in ("ii", "if", "ig", "io", "hi", "hf", "hg", "ho")),
  *(("lstm", g, "bias") for g in ("hi", "hf", "hg", "ho")),
  *(("gru", g, "kernel") for g in ("ir", "iz", "in", "hr", "hz", "hn")),
  *(("gru", g, "bias") for g in ("ir", "iz", "in", "hn")),
  ("stack", "cell", "h", "kernel"),
  ("stack", "cell", "i", "kernel"),
  ("stack", "cell", "i", "bias"),
  ("recur",),
}
RESIDUAL = {"tablealsoadded": {("table",)}}
BROADCAST = {
  "rawkernel": {("table",), ("kernel",), ("pos",)},
  "rawlookups": {("table",), ("first",), ("past",), ("fill",), ("mixed",)},
  "rematlookup": {("inner", "table"), ("inner", "w")},
  "nested": _NESTED,
  "recurrent": _RECURRENT,
  "rawdots": {("kernel",), ("heads",), ("gate",), ("b",)},
  "wrapped": {
    *(("remat", layer, leaf) for layer, leaf in _BLOCK_LEAVES),
    ("wd", "kernel"),
    ("wd", "bias"),
    ("wn", "wd/kernel/scale"),
  },
  "raw": {("pos",), ("scale",), ("b",), ("pos_embed", "embedding"), ("prelu", "negative_slope")},
  "broadcasts": {
    ("table",),
    ("log_scale",),
    ("shift",),
    ("gain",),
    ("mix",),
    ("floor",),
    ("pos_mlp", "kernel"),
    ("pos_mlp", "bias"),
    ("remat", "offset"),
    ("temp",),
  },
}


def _loss_fn(module):
  def loss(params, batch, rng=None):
    del rng
    logits = module.apply({"params": params}, batch["tokens"], batch["mask"])
    logp = jax.nn.log_softmax(logits.astype(jnp.float64), -1)
    nll = -jnp.take_along_axis(logp, batch["label"][:, None], -1)[:, 0]
    return nll * batch["weight"]

  return loss


def _close(a, b, tol=1e-10):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


def _check(loss, params, batch, clip):
  """Ghost (flat and per-layer) against the naive clipped sums, compiled as one function."""

  @jax.jit
  def both(p, b):
    grads, _ = per_example.per_example_grads(loss, p, b)
    out = []
    for how in ("flat", "per_layer"):
      out.append(ghost.clipped_sum(loss, p, b, clip, clipping=how))
      out.append(clipping.clipped_sum(grads, clip, b["weight"], how))
    return out

  (g1, s1), (r1, t1), (g2, s2), (r2, t2) = both(params, batch)
  for got, st, ref, st_ref in ((g1, s1, r1, t1), (g2, s2, r2, t2)):
    _close(got, ref)
    np.testing.assert_allclose(st["norms"], st_ref["norms"], rtol=1e-10)
    assert float(st["num_clipped"]) == float(st_ref["num_clipped"]) > 0


CASES = [(name, B) for name in sorted(MODULES)]
CASES += [("broadcasts", T), ("raw", T), ("rawdots", D), ("nested", T), ("nested", 2)]
CASES += [("recurrent", T), ("rawlookups", T)]


@pytest.mark.parametrize("name,size", CASES)  # size T: a position axis has the batch's size.
def test_rules_equal_naive_float64(name, size, caplog):
  with jax.enable_x64(True):
    module = MODULES[name]()
    batch = _batch(size=size)
    params = module.init(jax.random.key(0), batch["tokens"], batch["mask"])["params"]
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    loss = _loss_fn(module)
    ghost._warned.clear()
    with caplog.at_level(logging.WARNING):
      _check(loss, params, batch, 0.05)
    pl = ghost.plan(loss, params, batch)
    residual = RESIDUAL.get(name, set())
    assert set(pl.uncovered) == residual
    assert set(pl.broadcast) == BROADCAST.get(name, set())
    for path in residual:  # The warning names each residual leaf.
      assert "/".join(path) in caplog.text
    if not residual:
      assert "no ghost-norm rule" not in caplog.text


def test_raw_kernels_in_products_take_the_einsum_rule():
  # x @ w and both einsums of ``heads`` are kernel sites (ghost norm from the product's input
  # and output gradient, no per-example gradient); softplus(g) is expanded per example.
  module = RawDots()
  batch = _batch()
  params = module.init(jax.random.key(0), batch["tokens"], batch["mask"])["params"]
  with jax.enable_x64(True):
    pl = ghost.plan(_loss_fn(module), params, batch)
  kernel = {pl.broadcast[s.rule[0]] for s in pl.sites if s.rule is not None}
  assert kernel == {("kernel",), ("heads",)}
  assert sum(s.rule is not None for s in pl.sites) == 3


def test_scan_bodies_are_interpreted_per_iteration(monkeypatch):
  # nn.scan's stacked Dense kernel: one kernel site per row (its rows are disjoint, so its
  # ghost norm adds over them); nn.RNN's GRU kernels: one kernel site per time step of the
  # whole leaf (their uses add, cross terms included).
  module = Nested()
  batch = _batch()
  params = module.init(jax.random.key(0), batch["tokens"], batch["mask"])["params"]
  loss = _loss_fn(module)
  with jax.enable_x64(True):
    pl = ghost.plan(loss, params, batch)
  rows: dict = {}
  for site in pl.sites:
    if site.rule is not None:
      rows.setdefault(pl.broadcast[site.rule[0]], []).append(site.rule[-1])
  assert sorted(rows[("blocks", "mlp", "kernel")]) == [0, 1]
  assert rows[("cell", "hr", "kernel")] == [None] * T
  assert rows[("remat", "mlp", "kernel")] == [None]  # Inside remat: its input leaves the body.
  # The forward keeps each scan rolled when its iterations have the same sites; the unrolled
  # form (what it does otherwise) gives the same sums.
  monkeypatch.setattr(ghost_broadcast, "ROLL_SCANS", False)
  with jax.enable_x64(True):
    module = Recurrent()  # Reverse, nested and closed-over scans.
    p64 = module.init(jax.random.key(0), batch["tokens"], batch["mask"])["params"]
    p64 = jax.tree.map(lambda x: x.astype(jnp.float64), p64)
    _check(_loss_fn(module), p64, batch, 0.05)
  monkeypatch.setattr(ghost_broadcast, "ROLL_SCANS", True)
  # A scan longer than the walker reads: every leaf it touches takes the fallback (whose
  # exactness the tablealsoadded case checks).
  monkeypatch.setattr(ghost_broadcast, "MAX_SCAN_LENGTH", 1)
  with jax.enable_x64(True):
    pl = ghost.plan(loss, params, batch)
  assert set(pl.uncovered) == _NESTED and pl.broadcast == ()


@pytest.mark.parametrize(
  "name,extra",
  [
    ("bag", dict(embed_dim=8, hidden_dim=8)),
    ("cnn", dict(embed_dim=8, num_filters=4, kernel_sizes=(2, 3))),
    (
      "transformer",
      dict(
        embed_dim=8,
        num_layers=1,
        num_heads=2,
        mlp_dim=16,
        dropout_rate=0.0,
        conv_kernel=3,
        causal_attention=True,
        pooling="max",
      ),
    ),
    ("causal_lm", dict(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16)),
  ],
)
def test_shipped_models_have_no_residual_leaf(name, extra, caplog):
  with jax.enable_x64(True):
    cfg = registry.default_model_config(name)
    cfg.update(extra)
    model = registry.build_model(cfg, vocab_size=V, num_classes=C, max_len=T)
    batch = _batch()
    params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(1), batch))
    ghost._warned.clear()
    with caplog.at_level(logging.WARNING):
      _check(model.per_example_loss, params, batch, 0.1)
    assert ghost.plan(model.per_example_loss, params, batch).uncovered == ()
    assert "no ghost-norm rule" not in caplog.text


# Broadcast sites; vmap fallback; layer rules (Dense, DenseGeneral, Einsum, norms, the conv
# backward-filter sum, tied lookup + attend): the invalid-row select runs in every batch.
@pytest.mark.parametrize("name", ["raw", "rawkernel", "layers", "convs", "tied"])
def test_nonfinite_example_is_dropped(name):
  with jax.enable_x64(True):
    module = MODULES[name]()
    batch = _batch()
    params = module.init(jax.random.key(0), batch["tokens"], batch["mask"])["params"]
    loss = _loss_fn(module)
    batch["poison"] = jnp.ones((B,)).at[3].set(jnp.nan)  # Example 3's loss is NaN.

    def bad_loss(p, b, rng=None):
      return loss(p, b, rng) * b["poison"]

    got, st = jax.jit(lambda p, b: ghost.clipped_sum(bad_loss, p, b, 0.1))(params, batch)
    assert float(st["num_nonfinite"]) == 1.0
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(got))
    batch_wo = dict(batch, weight=batch["weight"].at[3].set(0.0), poison=jnp.ones((B,)))
    ref, _ = jax.jit(lambda p, b: ghost.clipped_sum(bad_loss, p, b, 0.1))(params, batch_wo)
    _close(got, ref)


def test_lookup_norm_by_sorted_segments_equals_gram():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    ids = jnp.asarray(rng.integers(0, 7, (4, 40)))  # T >= 16: the segment path.
    g = jnp.asarray(rng.normal(size=(4, 40, 5)))
    onehot = jax.nn.one_hot(ids, 7, dtype=jnp.float64)
    dense = jnp.einsum("btv,btd->bvd", onehot, g)  # Materialised per-example table gradient.
    ref = jnp.sum(dense**2, axis=(1, 2))
    for method, rows in (("segment", None), ("segment", 7), ("gram", None), ("auto", 7)):
      got = rules.lookup_sq(ids, g, method=method, table_rows=rows)
      np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-12)


class NnxNet(nnx.Module):
  """NNX layers: Embed (lookup + tied attend), Linear twice, LinearGeneral, Einsum, Conv, norms."""

  def __init__(self, rngs):
    kw = dict(rngs=rngs, param_dtype=jnp.float64)  # NNX casts parameters to param_dtype.
    self.embed = nnx.Embed(V, D, **kw)
    self.ln = nnx.LayerNorm(D, **kw)
    self.rms = nnx.RMSNorm(D, **kw)
    self.mix = nnx.Linear(D, D, **kw)
    self.conv = nnx.Conv(D, 4, (3,), padding="CAUSAL", **kw)
    self.gen = nnx.LinearGeneral(4, (2, 2), **kw)
    self.ein = nnx.Einsum("bthk,hkc->btc", (2, 2, C), (C,), **kw)

  def __call__(self, tokens, mask):
    x = self.rms(self.ln(self.embed(tokens)))
    x = self.mix(jnp.tanh(self.mix(x))) * mask[..., None]
    y = self.ein(jnp.tanh(self.gen(nnx.relu(self.conv(x)))))
    tied = self.embed.attend(x.mean(1))[:, :C]
    return y.mean(1) + tied


def test_nnx_model_rules_equal_naive_float64(caplog):
  from trustml.models import nnx_adapter  # noqa: PLC0415

  with jax.enable_x64(True):
    model = nnx_adapter.from_nnx(NnxNet(nnx.Rngs(0)), name="nnx", num_classes=C)
    batch = _batch()
    params = model.init(None, batch)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float64")}
    ghost._warned.clear()
    with caplog.at_level(logging.WARNING):
      _check(model.per_example_loss, params, batch, 0.05)
    assert ghost.plan(model.per_example_loss, params, batch).uncovered == ()
    assert "no ghost-norm rule" not in caplog.text


class NnxRemat(nnx.Module):
  """An NNX layer called under ``nnx.remat``: its call is not recorded (inner trace), and its
  kernel and bias are found as sites inside the checkpoint body (expanded per example there)."""

  def __init__(self, rngs):
    kw = dict(rngs=rngs, param_dtype=jnp.float64)
    self.embed = nnx.Embed(V, D, **kw)
    self.mix = nnx.Linear(D, D, **kw)
    self.head = nnx.Linear(D, C, **kw)

  def __call__(self, tokens, mask):
    x = self.embed(tokens) * mask[..., None]
    x = nnx.remat(lambda m, h: jnp.tanh(m(h)))(self.mix, x)
    return self.head(x.mean(1))


def test_nnx_layer_under_remat_is_exact_without_per_example_copies(caplog):
  from trustml.models import nnx_adapter  # noqa: PLC0415

  with jax.enable_x64(True):
    model = nnx_adapter.from_nnx(NnxRemat(nnx.Rngs(0)), name="nnx_remat", num_classes=C)
    batch = _batch()
    params = model.init(None, batch)
    ghost._warned.clear()
    with caplog.at_level(logging.WARNING):
      _check(model.per_example_loss, params, batch, 0.05)
    pl = ghost.plan(model.per_example_loss, params, batch)
    assert pl.uncovered == ()
    assert set(pl.broadcast) == {("mix", "kernel"), ("mix", "bias")}
    assert "no ghost-norm rule" not in caplog.text
