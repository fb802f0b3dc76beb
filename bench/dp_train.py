"""Benchmark: whole training runs on SNIPS, non-private vs eDP-SGD, same epochs and logical batch.

Both runs are ``python -m launch.train`` on the real SNIPS copy (``data.dir``: '' =
$TRUSTML_DATA_DIR, then ../shared/data), same model, same number of epochs and the same
logical batch: the non-private run takes shuffled batches of ``--logical`` rows; the eDP-SGD
run (configs/dp_nlu.py, ε = ``--eps``) Poisson-samples batches of expected size ``--logical``,
padded to the sampler's cap and processed in micro-batches of ``--physical`` rows, twice:
``edp`` processes every row of the cap (constant step time, the default of
configs/dp_nlu.py) and ``edp_skip`` sets ``privacy.skip_padding=True`` (micro-batches holding
only padding are skipped; same updates, the step time then reveals ⌈|B_t| / physical⌉, which
the ε does not cover). Reported
per run: ``train/wall_seconds`` from ``summary.json`` (training loop from the first step to
the final evaluation: compilation of the step, checkpoints and evaluation included; data
loading, tokenisation and model init excluded), ``train/first_step_seconds`` (compilation and
the first step), the process wall time, steps, rows per
step, and eval accuracy; then the eDP/plain ratios of the training loop, of the loop after its
first step (compilation is a fixed cost: longer runs converge to this one) and of the process.

  python bench/dp_train.py --model=cnn --epochs=3
  python bench/dp_train.py --model=transformer --epochs=3 --variants=plain,edp_skip
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _run(config: str, overrides: dict, workdir: str) -> dict:
  cmd = [sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={workdir}"]
  cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
  t = time.perf_counter()
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t
  if out.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  summary["process_wall_seconds"] = wall
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="cnn", choices=("bag", "cnn", "transformer"))
  parser.add_argument("--epochs", type=float, default=3.0)
  parser.add_argument("--logical", type=int, default=1024)
  parser.add_argument("--physical", type=int, default=64)
  parser.add_argument("--variants", default="plain,edp,edp_skip", help="comma-separated")
  parser.add_argument("--eps", type=float, default=3.0)
  parser.add_argument("--workdir", default="", help="parent folder (default: a temp folder)")
  args = parser.parse_args()
  parent = args.workdir or tempfile.mkdtemp(prefix="dp_train_")
  common = {"train.num_epochs": args.epochs, "train.eval_every": 0, "train.checkpoint_every": 0}
  base = f"data=snips,model={args.model}"
  dp = dict(
    common, **{"train.batch_size": args.physical, "privacy.virtual_batch_size": args.logical}
  )
  runs = {
    "plain": (f"configs/nlu.py:{base}", dict(common, **{"train.batch_size": args.logical})),
    "edp": (f"configs/dp_nlu.py:{base},eps={args.eps}", dp),
    "edp_skip": (
      f"configs/dp_nlu.py:{base},eps={args.eps}",
      dict(dp, **{"privacy.skip_padding": True}),
    ),
  }
  variants = args.variants.split(",")
  unknown = sorted(set(variants) - set(runs))
  if unknown or "plain" not in variants:
    raise SystemExit(
      f"error: --variants={args.variants} is invalid: plain plus any of edp, edp_skip"
    )
  results = {}
  for name in variants:
    config, overrides = runs[name]
    s = _run(config, overrides, os.path.join(parent, name))
    rows = s.get("privacy/batch_rows", s.get("train/batch_size", float("nan")))
    results[name] = {
      "model": args.model,
      "run": name,
      "train_wall_s": s["train/wall_seconds"],
      "first_step_s": s.get("train/first_step_seconds", float("nan")),
      "process_wall_s": s["process_wall_seconds"],
      "steps": s["train/steps"],
      "rows_per_step": rows,
      "accuracy": s.get("eval/accuracy"),
      "epsilon": s.get("privacy/epsilon"),
    }
    print(json.dumps(results[name]), flush=True)
  p = results["plain"]
  for name in variants[1:]:
    e = results[name]
    ratio = {
      "model": args.model,
      "run": name,
      "epochs": args.epochs,
      "logical": args.logical,
      "physical": args.physical,
      "train_wall_ratio": e["train_wall_s"] / p["train_wall_s"],
      # The loop without its first step (compilation): what more epochs converge to.
      "after_first_step_ratio": (e["train_wall_s"] - e["first_step_s"])
      / (p["train_wall_s"] - p["first_step_s"]),
      "process_wall_ratio": e["process_wall_s"] / p["process_wall_s"],
    }
    print(json.dumps(ratio))
  print(
    "\n| run | train wall s | first step s | process wall s | steps | rows/step | accuracy | ε "
    "| × plain (train) |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for name in variants:
    r = results[name]
    eps = "—" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
    print(
      f"| {r['run']} | {r['train_wall_s']:.1f} | {r['first_step_s']:.1f} "
      f"| {r['process_wall_s']:.1f} | {r['steps']} "
      f"| {r['rows_per_step']} | {r['accuracy']:.4f} | {eps} "
      f"| {r['train_wall_s'] / p['train_wall_s']:.2f} |"
    )


if __name__ == "__main__":
  main()
