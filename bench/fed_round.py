"""Benchmark: one federated round as one jitted program vs a per-client Python loop vs centralized.

One round = C clients x S local steps x B examples (a small causal char LM on random text).
Measured side by side in one process (median of --reps runs after a compile run):

* ``round``: ``alg.apply`` (lax.scan over steps, vmap over clients, shard_map over devices);
* ``loop``: ``alg.reference_apply`` -- a Python loop over clients and steps calling a jitted
  client step (FedJAX ``for_each_client`` style);
* ``central``: centralized SGD on the same C*S*B examples in the same S steps (batch C*B),
  one jitted ``lax.scan``;
* ``central_seq``: centralized SGD on the same examples as C*S sequential steps of batch B.

Then the script re-runs itself in a subprocess with 4 fake CPU devices (sharded round).

  python bench/fed_round.py                       # C in {16, 128, 1024}, then 4 fake devices
  python bench/fed_round.py --sizes=16,128 --no_subprocess
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np  # noqa: E402
import optax  # noqa: E402

from trustml.federated import algorithms, packing
from trustml.federated import round as round_lib
from trustml.models import registry


def _model(vocab: int, seq: int):
  cfg = registry.default_model_config("causal_lm")
  cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.mlp_dim = 32, 1, 2, 64
  return registry.build_model(cfg, vocab_size=vocab, num_classes=vocab, max_len=seq)


def _interleaved(fns: dict, reps: int) -> dict:
  """Median wall time of each function; repetitions interleaved so all see the same load."""
  for fn in fns.values():
    fn()  # compile
  out = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      t = time.perf_counter()
      fn()
      out[k].append(time.perf_counter() - t)
  return {k: statistics.median(v) for k, v in out.items()}


def _one(c, model, gen, n_dev, mesh, steps, batch, seq, vocab, reps, loop_max):
  """Measures one client count C; prints and returns (C, round, loop, central, central_seq)."""
  n = c * steps * batch
  arrays = {
    "tokens": gen.integers(4, vocab, size=(n, seq)).astype(np.int32),
    "mask": np.ones((n, seq), bool),
    "label": np.zeros(n, np.int32),
    "weight": np.ones(n, np.float32),
  }
  rows = [np.arange(i * steps * batch, (i + 1) * steps * batch) for i in range(c)]
  packed = packing.device_arrays(
    packing.pack(arrays, rows, batch_size=batch, num_steps=steps, client_multiple=n_dev)
  )
  params = model.init(jax.random.key(0), {k: v[:2] for k, v in arrays.items()})
  alg = algorithms.fed_avg(model, client_learning_rate=0.1, mesh=mesh)
  dev_packed = round_lib.shard_packed(packed, mesh) if mesh is not None else jax.device_put(packed)
  holder = {"state": alg.init(params)}

  def run_round():
    holder["state"], _ = alg.apply(holder["state"], dev_packed, jax.random.key(1))
    jax.block_until_ready(holder["state"].params)

  loop_state = alg.init(params)

  def run_loop():
    s, _ = alg.reference_apply(loop_state, packed, jax.random.key(1))
    jax.block_until_ready(s.params)

  opt = optax.sgd(0.1)

  def make_central(num_steps, bsz):
    data = {k: jnp.asarray(v.reshape((num_steps, bsz) + v.shape[1:])) for k, v in arrays.items()}

    @jax.jit
    def train(p):
      def body(carry, batch):
        p, o = carry
        g = jax.grad(lambda q: jnp.mean(model.per_example_loss(q, batch)))(p)
        u, o = opt.update(g, o, p)
        return (optax.apply_updates(p, u), o), None

      (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), data)
      return p

    return lambda: jax.block_until_ready(train(params))

  fns = {
    "round": run_round,
    "central": make_central(steps, c * batch),
    "central_seq": make_central(c * steps, batch),
  }
  if c <= loop_max:
    fns["loop"] = run_loop
  times = _interleaved(fns, reps)
  t_round, t_central, t_seq = times["round"], times["central"], times["central_seq"]
  t_loop = times.get("loop", float("nan"))
  print(
    f"devices={n_dev} C={c:5d} S={steps} B={batch}: round {t_round * 1e3:9.1f} ms | loop {t_loop * 1e3:9.1f} ms"
    f" | central {t_central * 1e3:9.1f} ms | central_seq {t_seq * 1e3:9.1f} ms"
    f" | round/central {t_round / t_central:5.2f} | round/central_seq {t_round / t_seq:5.2f}"
    f" | loop/round {t_loop / t_round:6.1f}",
    flush=True,
  )
  return c, t_round, t_loop, t_central, t_seq


def bench(sizes, steps, batch, seq, vocab, reps, loop_max):
  model = _model(vocab, seq)
  gen = np.random.default_rng(0)
  n_dev = jax.device_count()
  mesh = round_lib.make_mesh() if n_dev > 1 else None
  results = []
  for c in sizes:
    results.append(_one(c, model, gen, n_dev, mesh, steps, batch, seq, vocab, reps, loop_max))
  return results


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="16,128,1024")
  ap.add_argument("--steps", type=int, default=4)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=16)
  ap.add_argument("--vocab", type=int, default=80)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--loop_max", type=int, default=1024, help="skip the Python loop above this C")
  ap.add_argument("--no_subprocess", action="store_true")
  args = ap.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  print(f"jax {jax.__version__}, {jax.device_count()} device(s): {jax.devices()[0].platform}")
  print(
    "| devices | C | round (ms) | loop (ms) | central (ms) | central_seq (ms) | round/central | round/central_seq | loop/round |"
  )
  bench(sizes, args.steps, args.batch, args.seq, args.vocab, args.reps, args.loop_max)
  if not args.no_subprocess and jax.device_count() == 1:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    cmd = [
      sys.executable,
      __file__,
      "--no_subprocess",
      f"--sizes={args.sizes}",
      f"--steps={args.steps}",
      f"--batch={args.batch}",
      f"--seq={args.seq}",
      f"--vocab={args.vocab}",
      f"--reps={args.reps}",
      f"--loop_max={args.loop_max}",
    ]
    subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
  main()
