"""Benchmark: S shadow models trained as one vmapped program vs one model alone.

  python -m bench.shadow_training                       # S=16, transformer, SNIPS-sized batch
  python -m bench.shadow_training --num_models=16 --model=bag --steps=50

Prints compile-excluded wall time of S models vmapped, of one model alone (the same program
without vmap), and their ratio (S x means no gain; well under S x is the point of vmapping).
Measured side by side in one run; medians of --repeats timed calls after a warm-up call.
With several devices (GPUs, TPU cores, or fake CPU devices via
``XLA_FLAGS=--xla_force_host_platform_device_count=D``) a third row splits the S models over
``--devices`` devices with ``shard_map`` (one model alone still runs on one device).
"""

import statistics
import time

import jax
import numpy as np
import optax
from absl import app, flags

from trustml.attacks import lira, shadow
from trustml.models import registry

_S = flags.DEFINE_integer("num_models", 16, "Shadow models trained together.")
_MODEL = flags.DEFINE_string("model", "transformer", "bag | cnn | transformer.")
_STEPS = flags.DEFINE_integer("steps", 30, "Training steps per model.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Rows per step.")
_POOL = flags.DEFINE_integer("pool", 2048, "Candidate pool size.")
_LEN = flags.DEFINE_integer("max_len", 32, "Sequence length.")
_VOCAB = flags.DEFINE_integer("vocab", 8000, "Vocabulary size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per variant.")
_DEVICES = flags.DEFINE_integer(
  "devices", 0, "Devices to split the models over (0: all visible; 1: no sharded row)."
)


def _time(fn) -> float:
  jax.block_until_ready(fn())  # Compile + warm-up.
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv):
  del argv
  cfg = registry.default_model_config(_MODEL.value)
  if "dropout_rate" in cfg:
    cfg.dropout_rate = 0.0
  model = registry.build_model(cfg, vocab_size=_VOCAB.value, num_classes=7, max_len=_LEN.value)
  rng = np.random.default_rng(0)
  n, t = _POOL.value, _LEN.value
  pool = {
    "tokens": rng.integers(4, _VOCAB.value, (n, t)).astype(np.int32),
    "mask": np.ones((n, t), bool),
    "label": rng.integers(0, 7, n).astype(np.int32),
    "weight": np.ones(n, np.float32),
  }
  masks = lira.shadow_masks(_S.value, n, seed=0)
  opt = optax.adam(1e-3)
  kw = dict(num_steps=_STEPS.value, batch_size=_BATCH.value, seed=0)
  t_all = _time(lambda: shadow.train_shadow_models(model, opt, pool, masks, **kw)[1])
  t_one = _time(lambda: shadow.train_one(model, opt, pool, masks, 0, **kw)[1])
  s = _S.value
  d = _DEVICES.value or jax.device_count()
  t_sharded = None
  if d > 1:
    mesh = shadow.make_mesh(d)
    t_sharded = _time(
      lambda: shadow.train_shadow_models(model, opt, pool, masks, mesh=mesh, **kw)[1]
    )
  print(
    f"model={_MODEL.value} steps={_STEPS.value} batch={_BATCH.value} T={t} devices={jax.devices()}"
  )
  print(f"one model alone:        {t_one:.3f} s")
  print(f"{s} models vmapped:     {t_all:.3f} s")
  print(
    f"ratio vmapped/one:      {t_all / t_one:.2f}x  (sequential would be {s}x;"
    f" per-model speed-up {s * t_one / t_all:.2f}x)"
  )
  if t_sharded is not None:
    print(f"{s} models over {d} devices: {t_sharded:.3f} s")
    print(f"ratio sharded/one:      {t_sharded / t_one:.2f}x")


if __name__ == "__main__":
  app.run(main)
