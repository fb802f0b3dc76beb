"""eDP-SGD on models a researcher brings: rule coverage and step time against the plain gradient.

Each model is written the way a Flax user would write it, not with trustml's layers:

* ``linen_mha``: pre-LN transformer with ``nn.MultiHeadDotProductAttention``, a raw
  ``(1, T, D)`` position ``self.param`` added with broadcasting, mean pool;
* ``nnx_mha``: the same in Flax NNX (``nnx.MultiHeadAttention``, an ``nnx.Param`` position
  table);
* ``raw_mlp``: residual MLP blocks whose kernels are raw ``self.param`` arrays used as
  ``x @ w`` (kernel sites);
* ``depthwise``: depthwise-separable CNN (``nn.Conv(feature_group_count=D)`` + pointwise);
* ``scan``: pre-LN MLP blocks stacked with ``nn.scan(variable_axes={"params": 0})`` (the
  walker interprets the scan per iteration: each row of a stacked kernel is a kernel site);
* ``scan_remat``: the same blocks as ``nn.scan(nn.remat(Block))`` (the large-model idiom: the
  kernel sites' inputs leave each checkpoint body as extra outputs);
* ``raw_embed``: a raw ``self.param`` token table gathered as ``table[tokens]`` (a lookup
  site: the table's ghost norm from the ids and the output gradient) under an MLP block;
* ``rnn``: an ``nn.RNN`` of an ``nn.LSTMCell`` over the tokens, last state to the head (one
  kernel site per time step of each gate kernel).

For each: the residual leaves (``ghost.plan``), then ``ghost.clipped_sum`` (C = 1) against
``jax.grad`` of the mean loss, both jitted, timed interleaved in one process (medians of
``--reps`` after one compile call). One JSON line per model and a markdown table.

  python bench/ghost_coverage.py                       # B = 256, T = 64, width 256
  python bench/ghost_coverage.py --models=raw_mlp,depthwise --batch=64
"""

import argparse
import json
import logging
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trustml.privacy import ghost  # noqa: E402

MODELS = ("linen_mha", "nnx_mha", "raw_mlp", "depthwise", "scan", "scan_remat", "raw_embed", "rnn")


def _linen_block(d: int, heads: int):
  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.LayerNorm()(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=heads)(h, h)
      return x + nn.Dense(d)(nn.gelu(nn.Dense(4 * d)(nn.LayerNorm()(x))))

  return Block


def build(name: str, vocab: int, seq: int, width: int, layers: int, classes: int = 8):
  """``(apply(params, tokens) -> logits, params)`` of one benchmark model."""
  d, heads = width, 4
  key = jax.random.key(0)
  tokens = jnp.zeros((2, seq), jnp.int32)
  if name == "nnx_mha":

    class NBlock(nnx.Module):
      def __init__(self, rngs):
        self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
        self.att = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(d, 4 * d, rngs=rngs), nnx.Linear(4 * d, d, rngs=rngs)

      def __call__(self, x):
        x = x + self.att(self.ln1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))

    class Net(nnx.Module):
      def __init__(self, rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Param(jax.random.normal(rngs.params(), (1, seq, d)) * 0.02)
        blocks = [NBlock(rngs) for _ in range(layers)]
        self.blocks = nnx.List(blocks) if hasattr(nnx, "List") else blocks
        self.head = nnx.Linear(d, classes, rngs=rngs)

      def __call__(self, tok):
        x = self.embed(tok) + self.pos[...]
        for b in self.blocks:
          x = b(x)
        return self.head(x.mean(1))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
    # Pure nested dicts of arrays (what trustml's NNX adapter trains): merged per call.
    return (lambda p, tok: nnx.merge(graphdef, nnx.State(p))(tok)), nnx.to_pure_dict(state)

  if name == "linen_mha":
    block = _linen_block(d, heads)

    class Net(nn.Module):
      @nn.compact
      def __call__(self, tok):
        pos = self.param("pos", nn.initializers.normal(0.02), (1, seq, d))
        x = nn.Embed(vocab, d)(tok) + pos
        for _ in range(layers):
          x = block()(x)
        return nn.Dense(classes)(nn.LayerNorm()(x).mean(1))

  elif name == "raw_mlp":

    class Net(nn.Module):
      @nn.compact
      def __call__(self, tok):
        x = nn.Embed(vocab, d)(tok)
        for i in range(layers):
          w1 = self.param(f"w1_{i}", nn.initializers.normal(0.02), (d, 4 * d))
          w2 = self.param(f"w2_{i}", nn.initializers.normal(0.02), (4 * d, d))
          x = x + nn.gelu(nn.LayerNorm()(x) @ w1) @ w2
        return nn.Dense(classes)(x.mean(1))

  elif name == "depthwise":

    class Net(nn.Module):
      @nn.compact
      def __call__(self, tok):
        x = nn.Embed(vocab, d)(tok)
        for _ in range(layers):
          x = nn.Conv(d, (5,), feature_group_count=d)(x)
          x = nn.relu(nn.Conv(d, (1,))(x))
        return nn.Dense(classes)(x.max(1))

  elif name in ("scan", "scan_remat"):

    class Block(nn.Module):
      @nn.compact
      def __call__(self, x, _):
        return x + nn.Dense(d)(nn.gelu(nn.Dense(4 * d)(nn.LayerNorm()(x)))), None

    body = nn.remat(Block) if name == "scan_remat" else Block

    class Net(nn.Module):
      @nn.compact
      def __call__(self, tok):
        x = nn.Embed(vocab, d)(tok)
        stack = nn.scan(
          body, variable_axes={"params": 0}, split_rngs={"params": True}, length=layers
        )
        x, _ = stack()(x, None)
        return nn.Dense(classes)(x.mean(1))

  elif name == "raw_embed":

    class Net(nn.Module):
      @nn.compact
      def __call__(self, tok):
        table = self.param("table", nn.initializers.normal(0.02), (vocab, d))
        x = table[tok]
        for _ in range(layers):
          x = x + nn.Dense(d)(nn.gelu(nn.Dense(4 * d)(nn.LayerNorm()(x))))
        return nn.Dense(classes)(x.mean(1))

  elif name == "rnn":

    class Net(nn.Module):
      @nn.compact
      def __call__(self, tok):
        x = nn.Embed(vocab, d)(tok)
        h = nn.RNN(nn.LSTMCell(d))(x)
        return nn.Dense(classes)(h[:, -1])

  else:
    raise SystemExit(f"error: --models={name} is invalid: must be among {','.join(MODELS)}")
  module = Net()
  params = module.init(key, tokens)["params"]
  return (lambda p, tok: module.apply({"params": p}, tok)), params


def measure(name: str, args) -> dict:
  """Residual leaves and the plain vs eDP step medians of one model."""
  apply, params = build(name, args.vocab, args.seq, args.width, args.layers)
  gen = np.random.default_rng(0)
  b = args.batch
  batch = {
    "tokens": jnp.asarray(gen.integers(0, args.vocab, (b, args.seq)), jnp.int32),
    "label": jnp.asarray(gen.integers(0, 8, b), jnp.int32),
    "weight": jnp.ones((b,), jnp.float32),
  }

  def loss_fn(p, bt, rng=None):
    del rng
    logp = jax.nn.log_softmax(apply(p, bt["tokens"]))
    return -jnp.take_along_axis(logp, bt["label"][:, None], 1)[:, 0] * bt["weight"]

  residual = [ghost._name(p) for p in ghost.plan(loss_fn, params, batch).uncovered]
  fns = {
    "plain": jax.jit(jax.grad(lambda p, bt: loss_fn(p, bt).mean())),
    "edp": jax.jit(lambda p, bt: ghost.clipped_sum(loss_fn, p, bt, 1.0)[0]),
  }
  for fn in fns.values():
    jax.block_until_ready(fn(params, batch))
  times: dict[str, list] = {k: [] for k in fns}
  for _ in range(args.reps):
    for k, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(params, batch))
      times[k].append(time.perf_counter() - t)
  plain, edp = (statistics.median(times[k]) for k in ("plain", "edp"))
  return {
    "model": name,
    "batch": b,
    "seq": args.seq,
    "residual_leaves": residual,
    "plain_s": plain,
    "edp_s": edp,
    "ratio_to_plain": edp / plain,
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--seq", type=int, default=64)
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--vocab", type=int, default=8000)
  p.add_argument("--reps", type=int, default=5)
  args = p.parse_args()
  names = args.models.split(",")
  for n in names:
    if n not in MODELS:
      raise SystemExit(f"error: --models={n} is invalid: must be among {','.join(MODELS)}")
  for field in ("batch", "seq", "width", "layers", "vocab", "reps"):
    if getattr(args, field) < 1:
      raise SystemExit(f"error: --{field}={getattr(args, field)} is invalid: must be >= 1")
  logging.getLogger("absl").setLevel(logging.ERROR)  # The fallback warning: in the rows.
  rows = []
  for n in names:
    rows.append(measure(n, args))
    print(json.dumps(rows[-1]), flush=True)
  print(f"\n{jax.devices()[0].device_kind}, B = {args.batch}, T = {args.seq}, width {args.width}")
  print("| model | residual leaves | plain | eDP-SGD | × plain |\n|---|---|---|---|---|")
  for r in rows:
    res = ", ".join(r["residual_leaves"]) or "none"
    print(
      f"| {r['model']} | {res} | {r['plain_s'] * 1e3:.1f} ms | {r['edp_s'] * 1e3:.1f} ms "
      f"| {r['ratio_to_plain']:.2f} |"
    )


if __name__ == "__main__":
  main()
