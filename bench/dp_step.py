"""Benchmark: one training step, non-private vs eDP-SGD, trustml (JAX) beside PyTorch + Opacus.

Models (``--models``, comma-separated):

* ``transformer``: the reference transformer (vocab 30k, width 256, 4 pre-LN blocks, 4 heads,
  MLP 1024, T = 64, mean pooling, 8 classes), B = 256; positions are an ``nn.Embed``;
* ``transformer_rawparam``: the same with the positional table a raw ``self.param`` added
  with broadcasting (``pos[None, :T]``);
* ``causal_lm``: trustml's causal LM (tied ``Embed.attend`` head), vocab 30k, width 256,
  4 layers, B = 64, T = 64;
* ``bag``: bag of embeddings (vocab 30k, 64 → 128 → 8), B = 256, T = 64;
* ``cnn``: the privacy study's CNN on SNIPS shapes (vocab 8k, T = 32, 64 filters of widths
  3/4/5), B = 256.

Variants: ``plain`` (``trustml.train.loop.mean_loss_grad_fn``), ``edp`` (eDP-SGD,
``trustml.privacy.mechanism.make_grad_fn``: clip, sum, noise, normalise, the whole batch in
one pass), ``edp_micro`` (the same step over micro-batches of 64 rows: same logical batch,
same single noise draw; the physical batch is eDP-SGD's memory knob), ``noise`` (the step's
Gaussian draw alone, one N(0, σ²C²) per parameter coordinate, added to the parameters: the
floor of every dense DP step; on the bag it is most of the eDP step), optionally
``naive`` (vmap DP-SGD); with the ``bench`` extra (torch CPU wheel + opacus) also
``torch_plain`` and ``opacus_ghost`` (Opacus 1.6 ghost clipping) on PyTorch twins of the
same architectures with the same weights (``bench/torch_peers.py``). Before timing, a
**parity check** runs both DP steps with σ = 0 and compares the clipped mean gradients
(trustml's is float64-tested against naive per-example clipping; a large difference flags the
peer: on the tied causal LM, Opacus's hooks never see the ``x @ embed.weight.T`` use, so its
per-example norms miss it).

* Time: median of ``--reps`` steps after warm-up; all variants of a model interleaved in one
  process so they see the same machine load. A step under 0.1 s is one sample = the mean of 5
  back-to-back steps after an untimed one (steady state, as in training; timed alone right
  after a PyTorch step it would also measure torch's spinning OpenMP threads).
  ``ratio_to_plain`` is to the same framework's plain step.
* Memory: each variant runs again in its own child process, which reports its peak RSS
  (VmHWM, reset after the warm-up step so compilation is excluded).

Output: one JSON line per model and variant, then a markdown table.

  python bench/dp_step.py --models=transformer,transformer_rawparam,causal_lm,bag,cnn
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

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

from trustml.models import networks, registry  # noqa: E402
from trustml.privacy import mechanism, noise  # noqa: E402
from trustml.train import loop  # noqa: E402

JAX_VARIANTS = ("plain", "naive", "edp", "edp_micro", "noise")
MICRO = 64  # Rows per micro-batch of the ``edp_micro`` variant.
TORCH_VARIANTS = ("torch_plain", "opacus_ghost")
MODELS = ("transformer", "transformer_rawparam", "causal_lm", "bag", "cnn")
CLIP = 1.0
# Steps faster than FAST_S are timed as the mean of BURST back-to-back steps after one untimed
# step, as in training: timed alone right after another framework's step, a millisecond step
# is measured against that framework's still-spinning threads (bag plain: 4.3 vs 1.8 ms).
FAST_S, BURST = 0.1, 5


class RawPosTransformer(networks.TransformerEncoder):
  """TransformerEncoder with its positions as a raw parameter added with broadcasting."""

  def setup(self):
    super().setup()
    self.pos = self.param("pos", nn.initializers.normal(1.0), (self.max_len, self.embed_dim))

  def encode(self, emb, mask, train=False):
    x = emb + self.pos[None, : emb.shape[1]]
    for block in self.blocks:
      x = block(x, mask, train)
    return self.final_ln(x)


def _spec(name: str) -> dict:
  if name in ("transformer", "transformer_rawparam", "causal_lm"):
    width = dict(embed_dim=256, num_layers=4, num_heads=4, mlp_dim=1024)
    size = 64 if name == "causal_lm" else 256
    return dict(vocab=30_000, seq=64, batch=size, width=width)
  if name == "bag":
    return dict(vocab=30_000, seq=64, batch=256, width=dict(embed_dim=64, hidden_dim=128))
  return dict(vocab=8_000, seq=32, batch=256, width=dict(embed_dim=64, num_filters=64))


def setup(name: str, batch_size: int | None = None):
  """(model, params, batch, spec) of a benchmark model, deterministic."""
  spec = _spec(name)
  b, t, v = batch_size or spec["batch"], spec["seq"], spec["vocab"]
  base = {"transformer_rawparam": "transformer"}.get(name, name)
  cfg = registry.default_model_config(base)
  cfg.update(spec["width"])
  if "dropout_rate" in cfg:
    cfg.dropout_rate = 0.0
  classes = v if name == "causal_lm" else 8
  if name == "transformer_rawparam":
    module = RawPosTransformer(
      vocab_size=v, num_classes=8, max_len=t, **{k: cfg[k] for k in spec["width"]}
    )
    model = registry.from_flax(module, name=name, kind="classifier", num_classes=8)
  else:
    model = registry.build_model(cfg, vocab_size=v, num_classes=classes, max_len=t)
  gen = np.random.default_rng(0)
  lengths = gen.integers(t // 2, t + 1, b)
  mask = np.arange(t)[None] < lengths[:, None]
  batch = {
    "tokens": jnp.asarray(np.where(mask, gen.zipf(1.3, (b, t)) % v, 0), jnp.int32),
    "mask": jnp.asarray(mask),
    "label": jnp.asarray(gen.integers(0, 8, b), jnp.int32),
    "weight": jnp.ones((b,), jnp.float32),
  }
  params = model.init(jax.random.key(0), batch)
  return model, params, batch, dict(spec, batch=b, lm=name == "causal_lm")


def jax_step(variant: str, model, batch_size: int, sigma: float = 1.0, naive_physical=32):
  """The jitted gradient function of a JAX variant."""
  if variant == "plain":
    return jax.jit(loop.mean_loss_grad_fn(model))
  if variant == "noise":  # The step's Gaussian draw alone, added to a tree of the params' shapes.
    return jax.jit(lambda params, batch, key: noise.add_gaussian_noise(params, sigma * CLIP, key))
  phys = naive_physical if variant == "naive" and batch_size > naive_physical else None
  if variant == "edp_micro" and batch_size > MICRO:
    phys = MICRO
  return jax.jit(
    mechanism.make_grad_fn(
      model,
      mechanism="dp_sgd" if variant == "naive" else "edp_sgd",  # edp, edp_micro: eDP-SGD.
      l2_clip_norm=CLIP,
      noise_multiplier=sigma,
      normaliser=float(batch_size),
      physical_batch_size=phys,
    )
  )


def torch_available() -> bool:
  try:
    import opacus  # noqa: F401, PLC0415
    import torch  # noqa: F401, PLC0415
  except ImportError:
    return False
  return True


def torch_setup(name: str, params, batch, spec, sigma: float):
  """The PyTorch twin with the Flax weights, its tensors and its steps (``torch_peers``)."""
  import torch  # noqa: PLC0415

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_peers  # noqa: PLC0415

  w, v = spec["width"], spec["vocab"]
  if name in ("transformer", "transformer_rawparam", "causal_lm"):
    module = torch_peers.Transformer(
      v, v if spec["lm"] else 8, spec["seq"], w["embed_dim"], w["num_layers"], w["num_heads"],
      w["mlp_dim"], raw_pos=name == "transformer_rawparam", lm=spec["lm"],
    )  # fmt: skip
  elif name == "bag":
    module = torch_peers.Bag(v, 8, w["embed_dim"], w["hidden_dim"])
  else:
    module = torch_peers.CNN(v, 8, w["embed_dim"], w["num_filters"], (3, 4, 5))
  torch_peers.load_flax(module, flax.traverse_util.flatten_dict(params))
  tensors = {k: torch.from_numpy(np.asarray(batch[k])) for k in ("tokens", "mask", "label")}
  tensors["tokens"] = tensors["tokens"].long()
  tensors["label"] = tensors["label"].long()
  return module, torch_peers.make_steps(module, tensors, spec["lm"], CLIP, sigma)


def parity(name: str, model, params, batch, spec) -> dict:
  """σ = 0: trustml eDP vs Opacus ghost clipped mean gradient (relative L2 error), and the
  plain gradients of both frameworks."""
  module, steps = torch_setup(name, params, batch, spec, sigma=0.0)
  out = {}
  plain_jax, _ = jax_step("plain", model, spec["batch"])(params, batch, jax.random.key(0))
  edp_jax, aux = jax_step("edp", model, spec["batch"], sigma=0.0)(params, batch, jax.random.key(0))
  out["clipped_fraction"] = (
    float(aux.get("unsafe/num_clipped", aux.get("dp/num_clipped", jnp.nan))) / spec["batch"]
  )
  pairs = [("plain", plain_jax, "plain")]
  if "opacus_ghost" in steps:
    pairs.append(("dp", edp_jax, "opacus_ghost"))
  else:
    out["opacus_error"] = steps["opacus_error"]
  names = [n for n, _ in module.named_parameters()]
  for label, jax_grads, step in pairs:
    torch_grads = steps[step]()
    flat = flax.traverse_util.flatten_dict(jax_grads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_peers  # noqa: PLC0415

    ref = {}
    for path, g in flat.items():
      g = np.asarray(g, np.float64)
      if path[-1] == "kernel":
        g = g.T if g.ndim == 2 else np.transpose(g, (2, 1, 0))
      key = "pos_embed.pos" if path[-1] == "pos" else torch_peers._torch_name(path)
      ref[key] = g
    num = den = 0.0
    for n, tg in zip(names, torch_grads, strict=True):
      diff = tg.detach().double().numpy() - ref[n]
      num += float((diff**2).sum())
      den += float((ref[n] ** 2).sum())
    out[f"{label}_rel_err"] = (num / den) ** 0.5
  return out


def _peak_rss_kb() -> float:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return float(line.split()[1])
  except OSError:
    pass
  return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak_rss() -> None:
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
  """Runs one variant (warm-up, reset peak, 2 steps) and prints its peak RSS as JSON."""
  model, params, batch, spec = setup(args.child_model)
  if args.child in TORCH_VARIANTS:
    _, steps = torch_setup(args.child_model, params, batch, spec, sigma=1.0)
    name = "plain" if args.child == "torch_plain" else "opacus_ghost"
    if name not in steps:
      print(json.dumps({"rss_mb": float("nan")}))
      return
    del params, model
    fn = steps[name]
    fn()
    _reset_peak_rss()
    for _ in range(2):
      fn()
  else:
    fn = jax_step(args.child, model, spec["batch"])
    key = jax.random.key(0)
    jax.block_until_ready(fn(params, batch, key))
    _reset_peak_rss()
    for _ in range(2):
      jax.block_until_ready(fn(params, batch, key))
  print(json.dumps({"rss_mb": _peak_rss_kb() / 1024.0}))


def _memory(name: str, variant: str) -> float:
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={variant}", f"--child_model={name}"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    print(f"  [memory child {name}/{variant} failed: {out.stderr[-300:]!r}]", file=sys.stderr)
    return float("nan")
  return json.loads(out.stdout.strip().splitlines()[-1])["rss_mb"]


def _time(name: str, variants: list, reps: int) -> tuple[dict, dict]:
  model, params, batch, spec = setup(name)
  fns, info = {}, {}
  for v in variants:
    if v in JAX_VARIANTS:
      f = jax_step(v, model, spec["batch"])
      fns[v] = lambda f=f, i=[0]: jax.block_until_ready(  # noqa: B006
        f(params, batch, jax.random.key(i.__setitem__(0, i[0] + 1) or i[0]))
      )
  torch_vs = [v for v in variants if v in TORCH_VARIANTS]
  if torch_vs:
    _, steps = torch_setup(name, params, batch, spec, sigma=1.0)
    for v in torch_vs:
      key = "plain" if v == "torch_plain" else "opacus_ghost"
      if key in steps:
        fns[v] = steps[key]
      else:
        info[v] = steps["opacus_error"]
  burst = {}
  for v, fn in fns.items():
    fn()  # Compile / warm up.
    t = time.perf_counter()
    fn()
    burst[v] = BURST if time.perf_counter() - t < FAST_S else 1
  times = {v: [] for v in fns}
  for _ in range(reps):
    for v, fn in fns.items():
      if burst[v] > 1:
        fn()  # Settle: the previous variant's threads (torch's OpenMP pool spins) go idle.
      t = time.perf_counter()
      for _ in range(burst[v]):
        fn()
      times[v].append((time.perf_counter() - t) / burst[v])
  return {v: statistics.median(ts) for v, ts in times.items()}, info


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--variants", default="plain,edp,edp_micro,noise,torch_plain,opacus_ghost")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--no_memory", action="store_true")
  parser.add_argument("--no_parity", action="store_true")
  parser.add_argument("--child", default="")
  parser.add_argument("--child_model", default="")
  args = parser.parse_args()
  if args.child:
    _child(args)
    return
  variants = args.variants.split(",")
  if not torch_available():
    print("torch/opacus not installed (pip install '.[bench]'): PyTorch variants skipped")
    variants = [v for v in variants if v not in TORCH_VARIANTS]
  else:
    import torch  # noqa: PLC0415

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
  print(f"jax {jax.__version__} on {jax.devices()}; reps {args.reps}", flush=True)
  rows = []
  for name in args.models.split(","):
    if name not in MODELS:
      raise SystemExit(f"--models={name} is invalid: must be among {','.join(MODELS)}")
    par = {}
    if not args.no_parity and any(v in TORCH_VARIANTS for v in variants):
      model, params, batch, spec = setup(name)
      par = parity(name, model, params, batch, spec)
      print(json.dumps({"model": name, "parity": par}), flush=True)
    mem = {} if args.no_memory else {v: _memory(name, v) for v in variants}
    t, info = _time(name, variants, args.reps)
    for v in variants:
      base = "torch_plain" if v in TORCH_VARIANTS else "plain"
      row = {
        "model": name,
        "variant": v,
        "median_s": t.get(v, float("nan")),
        "ratio_to_plain": t.get(v, float("nan")) / t.get(base, float("nan")),
        "peak_rss_mb": mem.get(v, float("nan")),
        "peak_rss_ratio": mem.get(v, float("nan")) / mem.get(base, float("nan")),
      }
      if v in info:
        row["error"] = info[v]
      if v == "opacus_ghost" and "dp_rel_err" in par:
        row["parity_rel_err"] = par["dp_rel_err"]
      rows.append(row)
      print(json.dumps(row), flush=True)
  print("\n| model | variant | step s | × plain | peak RSS MB | × plain | parity (rel. L2) |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    note = f" ({r['error'][:60]})" if "error" in r else ""
    print(
      f"| {r['model']} | {r['variant']}{note} | {r['median_s']:.4f} | {r['ratio_to_plain']:.2f} "
      f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_ratio']:.2f} | {r.get('parity_rel_err', '')} |"
    )


if __name__ == "__main__":
  main()
