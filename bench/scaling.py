"""Benchmark: the DP-SGD step and the FL round on 1, 2, 4 devices and on 2 processes x 2 devices.

Both are trustml's own paths, unchanged: the DP-SGD step is ``trustml.train.loop``'s jitted
step (``make_train_step`` with a :class:`trustml.train.parallel.DataParallel` placement: the
logical batch split over the mesh's ``data`` axis, state replicated) around the eDP-SGD
transformation built by ``trustml.privacy.training.build`` from ``configs/dp_nlu.py``; the FL
round is ``trustml.federated.round`` (FedAvg, clients split over the ``clients`` axis with
``shard_map``). Each figure is the median of ``--reps`` calls after a compile call, printed with
its ratio to the 1-device figure measured in the same process. The 2 x 2 row runs this script
again as 2 processes on 127.0.0.1 (gloo collectives, ``jax.distributed``).

On a CPU host the "devices" are ``--xla_force_host_platform_device_count`` slices of the same
cores, so no speed-up is expected; the point is that every path runs and its overhead shows.
On a multi-GPU host pass ``--real_devices`` to use the accelerators instead.

  python bench/scaling.py                 # 1, 2, 4 fake CPU devices + 2 processes x 2
  python bench/scaling.py --reps=10 --no_multiprocess
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, ROOT)


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--devices", default="1,2,4", help="device counts measured in one process")
  p.add_argument("--logical_batch", type=int, default=256, help="DP-SGD logical batch rows")
  p.add_argument("--clients", type=int, default=64, help="FL clients per round")
  p.add_argument("--no_multiprocess", action="store_true")
  p.add_argument("--real_devices", action="store_true", help="use the host's accelerators")
  p.add_argument("--worker", default="", help="internal: coordinator address of a 2x2 run")
  p.add_argument("--process_id", type=int, default=0, help="internal")
  return p.parse_args()


def _median(fn, reps: int) -> float:
  fn()  # Compile.
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def dp_step_time(num_devices: int, logical: int, reps: int) -> float:
  """Median seconds of one eDP-SGD training step on a ``num_devices`` data mesh."""
  import jax  # noqa: PLC0415

  from configs import dp_nlu  # noqa: PLC0415
  from trustml.privacy import training  # noqa: PLC0415
  from trustml.train import config as train_config  # noqa: PLC0415
  from trustml.train import experiment, loop, parallel  # noqa: PLC0415

  c = dp_nlu.get_config("model=bag")
  c.privacy.noise_seed = 0
  c.privacy.noise_multiplier, c.privacy.target_epsilon = 1.0, None
  c.privacy.virtual_batch_size = logical
  c.train.batch_size = logical // num_devices  # One micro-batch per device and step.
  c.mesh.num_devices = num_devices
  prepared = experiment.prepare(c)
  built = training.build(c, prepared, num_data_shards=train_config.num_data_shards(c))
  dp_fn, batch_fn = built[1], built[2]
  optimizer = train_config.make_optimizer(c.train, 100)
  placement = parallel.DataParallel.from_config(c)
  first = batch_fn(0)
  state = placement.init_state(
    lambda: loop.init_state(prepared.model, optimizer, first, int(c.seed), dp_fn)
  )
  step = loop.make_train_step(
    dp_fn, optimizer, int(c.seed), placement=placement, state=state, batch=first
  )
  holder = {"state": state, "i": 0}

  def run():
    holder["i"] += 1
    holder["state"], aux = step(holder["state"], placement.place_batch(batch_fn(holder["i"])))
    jax.block_until_ready(holder["state"].params)

  return _median(run, reps)


def fl_round_time(num_devices: int, clients: int, reps: int) -> float:
  """Median seconds of one jitted FedAvg round with clients split over ``num_devices``."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from trustml.federated import algorithms, packing  # noqa: PLC0415
  from trustml.federated import round as round_lib  # noqa: PLC0415
  from trustml.models import registry  # noqa: PLC0415

  vocab, seq, steps, batch = 200, 16, 4, 8
  cfg = registry.default_model_config("bag")
  model = registry.build_model(cfg, vocab_size=vocab, num_classes=8, max_len=seq)
  gen = np.random.default_rng(0)
  n = clients * steps * batch
  arrays = {
    "tokens": gen.integers(4, vocab, (n, seq)).astype(np.int32),
    "mask": np.ones((n, seq), bool),
    "label": gen.integers(0, 8, n).astype(np.int32),
    "weight": np.ones(n, np.float32),
  }
  rows = [np.arange(i * steps * batch, (i + 1) * steps * batch) for i in range(clients)]
  packed = packing.device_arrays(
    packing.pack(arrays, rows, batch_size=batch, num_steps=steps, client_multiple=num_devices)
  )
  mesh = round_lib.make_mesh(num_devices) if num_devices > 1 else None
  alg = algorithms.fed_avg(model, client_learning_rate=0.1, mesh=mesh)
  placed = round_lib.shard_packed(packed, mesh) if mesh is not None else packed
  params = model.init(jax.random.key(0), {k: v[:2] for k, v in arrays.items()})
  holder = {"state": alg.init(params)}

  def run():
    holder["state"], _ = alg.apply(holder["state"], placed, jax.random.key(1))
    jax.block_until_ready(holder["state"].params)

  return _median(run, reps)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _multiprocess(args) -> dict:
  """Runs this script as 2 processes x 2 fake devices; returns process 0's figures."""
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  env["JAX_PLATFORMS"] = "cpu"
  base = [sys.executable, os.path.abspath(__file__), f"--worker={address}"]
  base += [f"--reps={args.reps}", f"--logical_batch={args.logical_batch}"]
  base += [f"--clients={args.clients}"]
  procs = [
    subprocess.Popen(
      base + [f"--process_id={i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=1200) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    if p.returncode:
      raise SystemExit(f"2x2 worker failed: {err.decode()[-2000:]}")
  return json.loads(outs[0][0].decode().strip().splitlines()[-1])


def main() -> None:
  args = _parse()
  if args.worker:
    from trustml.core import distributed  # noqa: PLC0415

    distributed.initialize(args.worker, 2, args.process_id)
    import jax  # noqa: PLC0415

    assert jax.device_count() == 4, jax.devices()
    dp = dp_step_time(4, args.logical_batch, args.reps)
    fl = fl_round_time(4, args.clients, args.reps)
    print(json.dumps({"dp_step_s": dp, "fl_round_s": fl}), flush=True)
    return
  counts = [int(x) for x in args.devices.split(",")]
  if not args.real_devices:
    flag = f"--xla_force_host_platform_device_count={max(counts)}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # noqa: PLC0415

  print(
    f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].platform}; reps {args.reps}"
  )
  print(
    f"DP-SGD (eDP, bag, logical batch {args.logical_batch}) and FedAvg ({args.clients} clients)"
  )
  rows = []
  for d in counts:
    rows.append(
      {
        "setup": f"1 process x {d}",
        "devices": d,
        "dp_step_s": dp_step_time(d, args.logical_batch, args.reps),
        "fl_round_s": fl_round_time(d, args.clients, args.reps),
      }
    )
    print(json.dumps(rows[-1]), flush=True)
  if not args.no_multiprocess:
    rows.append({"setup": "2 processes x 2", "devices": 4, **_multiprocess(args)})
    print(json.dumps(rows[-1]), flush=True)
  base = rows[0]
  print("\n| setup | devices | DP-SGD step (ms) | vs 1 device | FL round (ms) | vs 1 device |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['setup']} | {r['devices']} | {r['dp_step_s'] * 1e3:.1f} | "
      f"{r['dp_step_s'] / base['dp_step_s']:.2f}x | {r['fl_round_s'] * 1e3:.1f} | "
      f"{r['fl_round_s'] / base['fl_round_s']:.2f}x |"
    )


if __name__ == "__main__":
  main()
