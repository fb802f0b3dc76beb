"""The accelerator suite: one run, one JSON file, unchanged on a GPU host (``--tiny`` on CPU).

Parts (each in its own child process, so peak memory is its own and one failure does not stop
the rest; a part that fails or passes its time limit is recorded with its error):

* ``dp_step``: ``bench/dp_step.py`` (its models at their B = 256 shapes; causal_lm at 64),
  plain vs eDP-SGD step, ``--no_memory`` (memory is measured on the large model below);
* ``big_transformer``: a transformer of >= 100 M parameters (vocab 50,257, width 1,024,
  8 pre-LN blocks, 16 heads, MLP 4,096, T = 128, B = 32): plain step vs eDP-SGD step, each in
  its own child; time ratio and peak device memory (``memory_stats()['peak_bytes_in_use']``
  on GPU/TPU; peak RSS on CPU) and their ratio;
* ``shadow``: 16 LiRA shadow CNNs trained as one vmapped program vs one alone
  (``trustml.attacks.shadow``); the ratio should be well under 16;
* ``fl_round``: one jitted FedAvg round (``trustml.federated.round``) at 1,024 and 10,000
  clients per round (bag model, 4 local steps of 8 examples).

``--tiny`` shrinks every part to CPU seconds (CI runs it: ``tests/bench/test_accelerator_suite.py``).

  bench/accelerator_suite.sh --out=/tmp/suite.json          # full, on one GPU (<= 10 min H200)
  bench/accelerator_suite.sh --tiny --out=/tmp/tiny.json    # CPU smoke
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

PARTS = ("dp_step", "big_transformer", "shadow", "fl_round")
FULL = {
  "dp_models": "transformer,transformer_rawparam,causal_lm,bag,cnn",
  "big": dict(vocab=50_257, embed_dim=1024, num_layers=8, num_heads=16, mlp_dim=4096),
  "big_seq": 128,
  "big_batch": 32,
  "shadow": dict(models=16, steps=20, batch=64, pool=4096, vocab=8000, seq=32),
  "fl_clients": (1024, 10_000),
  "reps": 5,
  "timeout_s": 240,
}
TINY = {
  "dp_models": "bag",
  "big": dict(vocab=500, embed_dim=32, num_layers=1, num_heads=2, mlp_dim=64),
  "big_seq": 16,
  "big_batch": 8,
  "shadow": dict(models=4, steps=4, batch=8, pool=256, vocab=300, seq=8),
  "fl_clients": (8, 16),
  "reps": 2,
  "timeout_s": 240,
}


def _median(fn, reps: int) -> float:
  fn()  # Compile / warm up.
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _peak_memory_mb(device) -> tuple[float, str]:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20, "device_peak_bytes_in_use"
  kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kB.
  return kb / 1024.0, "host_peak_rss"


def big_model(sizes: dict):
  """The suite's large transformer (``sizes['big']``: vocab and widths)."""
  from trustml.models import registry  # noqa: PLC0415

  cfg = registry.default_model_config("transformer")
  cfg.update({k: v for k, v in sizes["big"].items() if k != "vocab"})
  if "dropout_rate" in cfg:
    cfg.dropout_rate = 0.0
  v, t = sizes["big"]["vocab"], sizes["big_seq"]
  return registry.build_model(cfg, vocab_size=v, num_classes=8, max_len=t)


def big_variant(sizes: dict, variant: str) -> dict:
  """One child: the big transformer's plain or eDP step; time, params, peak memory."""
  import dp_step  # noqa: PLC0415  (bench/dp_step.py: its step functions, unchanged)
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from trustml.train import loop  # noqa: PLC0415

  b, t, v = sizes["big_batch"], sizes["big_seq"], sizes["big"]["vocab"]
  model = big_model(sizes)
  gen = np.random.default_rng(0)
  batch = {
    "tokens": jnp.asarray(gen.integers(4, v, (b, t)), jnp.int32),
    "mask": jnp.ones((b, t), bool),
    "label": jnp.asarray(gen.integers(0, 8, b), jnp.int32),
    "weight": jnp.ones((b,), jnp.float32),
  }
  params = jax.jit(model.init)(jax.random.key(0), batch)
  fn = dp_step.jax_step(variant, model, b)
  key = jax.random.key(1)
  seconds = _median(lambda: jax.block_until_ready(fn(params, batch, key)), sizes["reps"])
  mem, kind = _peak_memory_mb(jax.devices()[0])
  return {
    "variant": variant,
    "num_params": loop.num_params(params),
    "batch": b,
    "seq": t,
    "step_s": seconds,
    "peak_memory_mb": mem,
    "memory_kind": kind,
  }


def shadow_part(sizes: dict) -> dict:
  """S shadow CNNs vmapped vs one alone (compile excluded)."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import optax  # noqa: PLC0415

  from trustml.attacks import lira, shadow  # noqa: PLC0415
  from trustml.models import registry  # noqa: PLC0415

  s = sizes["shadow"]
  cfg = registry.default_model_config("cnn")
  if "dropout_rate" in cfg:
    cfg.dropout_rate = 0.0
  model = registry.build_model(cfg, vocab_size=s["vocab"], num_classes=8, max_len=s["seq"])
  gen = np.random.default_rng(0)
  pool = {
    "tokens": gen.integers(4, s["vocab"], (s["pool"], s["seq"])).astype(np.int32),
    "mask": np.ones((s["pool"], s["seq"]), bool),
    "label": gen.integers(0, 8, s["pool"]).astype(np.int32),
    "weight": np.ones(s["pool"], np.float32),
  }
  masks = lira.shadow_masks(s["models"], s["pool"], seed=0)
  opt = optax.adam(1e-3)
  kw = dict(num_steps=s["steps"], batch_size=s["batch"], seed=0)

  def many():
    jax.block_until_ready(shadow.train_shadow_models(model, opt, pool, masks, **kw))

  def one():
    jax.block_until_ready(shadow.train_one(model, opt, pool, masks, 0, **kw))

  t_many, t_one = _median(many, sizes["reps"]), _median(one, sizes["reps"])
  return {
    "num_models": s["models"],
    "steps": s["steps"],
    "batch": s["batch"],
    "vmapped_s": t_many,
    "one_s": t_one,
    "ratio": t_many / t_one,
  }


def fl_part(sizes: dict) -> dict:
  """One jitted FedAvg round per client count (the round of bench/scaling.py)."""
  import scaling  # noqa: PLC0415  (bench/scaling.py)

  return {
    str(c): {"clients": c, "round_s": scaling.fl_round_time(1, c, sizes["reps"])}
    for c in sizes["fl_clients"]
  }


def _child(part: str, tiny: bool, variant: str) -> None:
  sizes = TINY if tiny else FULL
  if part == "big_transformer":
    out = big_variant(sizes, variant)
  elif part == "shadow":
    out = shadow_part(sizes)
  elif part == "fl_round":
    out = fl_part(sizes)
  else:
    raise SystemExit(f"unknown part {part}")
  print("RESULT " + json.dumps(out), flush=True)


def _spawn(cmd: list[str], timeout: float) -> tuple[str | None, str]:
  try:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return None, f"timed out after {timeout:.0f} s"
  if p.returncode:
    return None, (p.stderr or p.stdout)[-1500:]
  return p.stdout, ""


def _run_child(part: str, tiny: bool, timeout: float, variant: str = "") -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={part}", f"--variant={variant}"]
  out, err = _spawn(cmd + (["--tiny"] if tiny else []), timeout)
  if out is None:
    return {"ok": False, "error": err}
  line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
  return {"ok": True, **json.loads(line[len("RESULT ") :])}


def dp_step_part(sizes: dict) -> dict:
  cmd = [sys.executable, os.path.join(HERE, "dp_step.py"), f"--models={sizes['dp_models']}"]
  cmd += ["--variants=plain,edp", f"--reps={sizes['reps']}", "--no_memory", "--no_parity"]
  out, err = _spawn(cmd, sizes["timeout_s"] * 2)
  if out is None:
    return {"ok": False, "error": err}
  rows = []
  for line in out.splitlines():
    if line.startswith("{") and '"variant"' in line:
      rows.append(json.loads(line))
  return {"ok": bool(rows), "rows": rows}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="CPU-sized parts (CI)")
  p.add_argument("--out", default="accelerator_suite.json")
  p.add_argument("--parts", default=",".join(PARTS))
  p.add_argument("--child", default="")
  p.add_argument("--variant", default="")
  args = p.parse_args()
  if args.child:
    _child(args.child, args.tiny, args.variant)
    return
  sizes = TINY if args.tiny else FULL
  import jax  # noqa: PLC0415

  t0 = time.perf_counter()
  result = {
    "tiny": args.tiny,
    "jax": jax.__version__,
    "devices": [str(d) for d in jax.devices()],
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
    "host": platform.node(),
  }
  parts = args.parts.split(",")
  for part in parts:
    if part not in PARTS:
      raise SystemExit(f"--parts={part} is invalid: must be among {','.join(PARTS)}")
  timeout = sizes["timeout_s"]
  if "dp_step" in parts:
    result["dp_step"] = dp_step_part(sizes)
  if "big_transformer" in parts:
    plain = _run_child("big_transformer", args.tiny, timeout, "plain")
    edp = _run_child("big_transformer", args.tiny, timeout, "edp")
    big = {"plain": plain, "edp": edp, "ok": plain["ok"] and edp["ok"]}
    if big["ok"]:
      big["time_ratio"] = edp["step_s"] / plain["step_s"]
      big["memory_ratio"] = edp["peak_memory_mb"] / plain["peak_memory_mb"]
    result["big_transformer"] = big
  if "shadow" in parts:
    result["shadow"] = _run_child("shadow", args.tiny, timeout)
  if "fl_round" in parts:
    result["fl_round"] = _run_child("fl_round", args.tiny, timeout)
  result["wall_s"] = time.perf_counter() - t0
  result["ok"] = all(result[k]["ok"] for k in parts)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  _print(result)
  print(f"wrote {args.out} in {result['wall_s']:.0f} s")


def _print(r: dict) -> None:
  print(f"jax {r['jax']} on {r['device_kind']} ({len(r['devices'])} devices)")
  for row in r.get("dp_step", {}).get("rows", []):
    print(
      f"dp_step {row['model']:22s} {row['variant']:6s} {row['median_s'] * 1e3:9.2f} ms"
      f"  x{row['ratio_to_plain']:.2f} plain"
    )
  big = r.get("big_transformer")
  if big and big["ok"]:
    print(
      f"big transformer {big['plain']['num_params'] / 1e6:.1f} M params, B={big['plain']['batch']}:"
      f" plain {big['plain']['step_s'] * 1e3:.1f} ms, eDP {big['edp']['step_s'] * 1e3:.1f} ms"
      f" (x{big['time_ratio']:.2f}); peak memory {big['plain']['peak_memory_mb']:.0f} vs"
      f" {big['edp']['peak_memory_mb']:.0f} MB (x{big['memory_ratio']:.2f},"
      f" {big['plain']['memory_kind']})"
    )
  sh = r.get("shadow")
  if sh and sh["ok"]:
    print(
      f"shadow: {sh['num_models']} vmapped {sh['vmapped_s'] * 1e3:.1f} ms vs one"
      f" {sh['one_s'] * 1e3:.1f} ms (x{sh['ratio']:.2f}, of {sh['num_models']}x)"
    )
  fl = r.get("fl_round")
  if fl and fl["ok"]:
    for v in fl.values():
      if isinstance(v, dict):
        print(f"fl_round {v['clients']:6d} clients: {v['round_s'] * 1e3:.1f} ms")
  for k in PARTS:
    if k in r and not r[k]["ok"]:
      print(f"{k}: FAILED {r[k].get('error', '')[-300:]}")


if __name__ == "__main__":
  main()
