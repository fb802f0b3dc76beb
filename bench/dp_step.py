"""Benchmark: non-private step vs naive vmap DP-SGD vs eDP-SGD (ghost clipping), side by side.

Models: the bag of embeddings and the reference transformer (vocab 30k, width 256, 4 pre-LN
blocks, 4 heads, MLP 1024, T=64, mean-pool, 8 classes), batch 256. Each variant is the real
gradient function the training loop runs (``trustml.train.loop.mean_loss_grad_fn`` and
``trustml.privacy.mechanism.make_grad_fn``: clip, sum, noise, normalise), jitted.

* Time: median of ``--reps`` steps after a compile run, variants interleaved so all see the
  same machine load (the team machine is shared: contention inflates absolute figures).
* Memory: each variant runs again in its own child process (``--child``), which reports its
  peak RSS (``ru_maxrss``) and XLA's compiled memory analysis (arguments + outputs + temps).
  Ratios are to the non-private step of the same model. Children run before the timing run;
  the peak is reset after the first (compiling) call, so it measures execution, not XLA's
  compiler.
* The naive path on the transformer runs with ``--naive_physical`` micro-batches (default 32;
  a full 256-example vmap needs ~12 GB, more than a shared 24 GB machine should risk).
* Opacus is run only if torch and opacus import (not installed here: skipped).

  python bench/dp_step.py                         # both models, 5 reps, memory children
  python bench/dp_step.py --models=bag --reps=20 --no_memory
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from trustml.models import registry  # noqa: E402
from trustml.privacy import mechanism  # noqa: E402
from trustml.train import loop  # noqa: E402

VARIANTS = ("plain", "naive", "edp")


def _setup(name: str, batch_size: int, seq: int):
  if name == "bag":
    cfg = registry.default_model_config("bag")
    cfg.update(embed_dim=64, hidden_dim=128, dropout_rate=0.0)
  else:
    cfg = registry.default_model_config("transformer")
    cfg.update(embed_dim=256, num_layers=4, num_heads=4, mlp_dim=1024, dropout_rate=0.0)
  model = registry.build_model(cfg, vocab_size=30_000, num_classes=8, max_len=seq)
  gen = np.random.default_rng(0)
  lengths = gen.integers(seq // 2, seq + 1, batch_size)
  mask = np.arange(seq)[None] < lengths[:, None]
  batch = {
    "tokens": jnp.asarray(np.where(mask, gen.zipf(1.3, (batch_size, seq)) % 30_000, 0), jnp.int32),
    "mask": jnp.asarray(mask),
    "label": jnp.asarray(gen.integers(0, 8, batch_size), jnp.int32),
    "weight": jnp.ones((batch_size,), jnp.float32),
  }
  params = model.init(jax.random.key(0), batch)
  return model, params, batch


def _grad_fn(variant: str, model, batch_size: int, naive_physical: int | None):
  if variant == "plain":
    return jax.jit(loop.mean_loss_grad_fn(model))
  return jax.jit(
    mechanism.make_grad_fn(
      model,
      mechanism="dp_sgd" if variant == "naive" else "edp_sgd",
      l2_clip_norm=1.0,
      noise_multiplier=1.0,
      normaliser=float(batch_size),
      physical_batch_size=naive_physical if variant == "naive" else None,
    )
  )


def _peak_rss_kb() -> float:
  """Peak RSS of this process: VmHWM (ru_maxrss survives execve, so a child would report its
  parent's peak)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return float(line.split()[1])
  except OSError:
    pass
  return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak_rss() -> None:
  """Returns freed compiler heap to the OS, then resets VmHWM to the current RSS (Linux)."""
  try:
    import ctypes  # noqa: PLC0415

    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


def _child(args) -> None:
  """Runs one variant twice and prints peak RSS and XLA memory analysis as JSON."""
  model, params, batch = _setup(args.child_model, args.batch, args.seq)
  naive_phys = args.naive_physical if args.child_model == "transformer" else None
  fn = _grad_fn(args.child, model, args.batch, naive_phys)
  key = jax.random.key(0)
  compiled = fn.lower(params, batch, key).compile()
  mem = compiled.memory_analysis()
  xla = None
  if mem is not None:
    xla = int(
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      + mem.temp_size_in_bytes
      - mem.alias_size_in_bytes
    )
  jax.block_until_ready(fn(params, batch, key))
  _reset_peak_rss()  # Exclude compilation (LLVM) from the peak: measure execution only.
  for _ in range(2):
    jax.block_until_ready(fn(params, batch, key))
  rss_kb = _peak_rss_kb()
  print(json.dumps({"rss_mb": rss_kb / 1024.0, "xla_mb": None if xla is None else xla / 2**20}))


def _memory(name: str, variant: str, args) -> dict:
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    f"--child={variant}",
    f"--child_model={name}",
    f"--batch={args.batch}",
    f"--seq={args.seq}",
    f"--naive_physical={args.naive_physical}",
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    return {"rss_mb": float("nan"), "xla_mb": float("nan"), "error": out.stderr[-300:]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def _time(name: str, args) -> dict:
  model, params, batch = _setup(name, args.batch, args.seq)
  naive_phys = args.naive_physical if name == "transformer" else None
  fns = {v: _grad_fn(v, model, args.batch, naive_phys) for v in VARIANTS}
  keys = [jax.random.key(i) for i in range(args.reps + 1)]
  for fn in fns.values():
    jax.block_until_ready(fn(params, batch, keys[0]))  # Compile + warm-up.
  times = {v: [] for v in VARIANTS}
  for r in range(args.reps):
    for v, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(params, batch, keys[r + 1]))
      times[v].append(time.perf_counter() - t)
  return {v: statistics.median(ts) for v, ts in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="bag,transformer")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--seq", type=int, default=64)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--naive_physical", type=int, default=32)
  parser.add_argument("--no_memory", action="store_true")
  parser.add_argument("--no_time", action="store_true")
  parser.add_argument("--child", default="")
  parser.add_argument("--child_model", default="")
  args = parser.parse_args()
  if args.child:
    _child(args)
    return
  print(f"devices: {jax.devices()}  batch {args.batch}  seq {args.seq}  reps {args.reps}")
  try:
    import opacus  # noqa: F401
    import torch  # noqa: F401

    print("torch/opacus found, but the Opacus comparison is not implemented in this script")
  except ImportError:
    print("torch/opacus not installed: Opacus comparison skipped")
  for name in args.models.split(","):
    mem = {} if args.no_memory else {v: _memory(name, v, args) for v in VARIANTS}
    t = {v: float("nan") for v in VARIANTS} if args.no_time else _time(name, args)
    note = f" (naive: micro-batches of {args.naive_physical})" if name == "transformer" else ""
    print(f"\n== {name}{note}")
    print(
      f"{'variant':8s} {'step s':>9s} {'x plain':>8s} {'peak RSS MB':>12s} {'x plain':>8s}"
      f" {'XLA MB':>9s} {'x plain':>8s}"
    )
    for v in VARIANTS:
      row = f"{v:8s} {t[v]:9.4f} {t[v] / t['plain']:8.2f}"
      if mem:
        m, p = mem[v], mem["plain"]
        row += f" {m['rss_mb']:12.0f} {m['rss_mb'] / p['rss_mb']:8.2f}"
        if m.get("xla_mb") is not None and p.get("xla_mb"):
          row += f" {m['xla_mb']:9.1f} {m['xla_mb'] / p['xla_mb']:8.2f}"
        if "error" in m:
          row += f"  [child failed: {m['error']!r}]"
      print(row, flush=True)


if __name__ == "__main__":
  main()
