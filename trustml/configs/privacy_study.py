"""The privacy study: ε ∈ {∞, 8, 4, 2, 1, 0.5} plus non-DP defenses, SNIPS with canaries.

Each run trains (non-privately or with eDP-SGD at the target ε), then attacks and audits it
(``launch/attack.py``); the sweep launcher collects the summaries and ``--summarize`` adds the
Spearman correlations and ``plots/privacy_utility_leakage.png``.

Launch:
  python -m launch.sweep --config=configs/privacy_study.py:data=snips,small \
      --launcher=launch.attack --workdir=/tmp/privacy_study
  python -m launch.attack --summarize=/tmp/privacy_study
  python -m launch.attack --config=configs/privacy_study.py:smoke --workdir=/tmp/ps_smoke

  python -m launch.attack --config=configs/privacy_study.py:model=transformer --workdir=/tmp/ps_tr

Args: as configs/attack.py (data, model, ordered, eps, repeats, secrets, shadows, dropout,
epochs, small, smoke, seed); the study defaults are data=snips, model=cnn, repeats=10.
``model=transformer`` is configs/attack.py's order-aware transformer classifier
(:data:`trustml.configs.attack.ORDERED_TRANSFORMER`), trained without dropout for 10 epochs unless
``dropout``/``epochs`` are given.
"""

import ml_collections

from trustml.configs import attack
from trustml.core import config_args

EPSILONS = (float("inf"), 8.0, 4.0, 2.0, 1.0, 0.5)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The study's base config: configs/attack.py with SNIPS and the CNN by default.

  Both the CNN and the study's transformer (``model=transformer``:
  :data:`trustml.configs.attack.ORDERED_TRANSFORMER`) see the order of a secret's digits; the
  mean-pooled bidirectional transformer of configs/nlu.py (``ordered=False``) memorises the
  digit *set* instead, which caps its exposure (docs/attacks.md).

  Args:
    arg: configs/attack.py's comma-separated args.

  Returns:
    The config.
  """
  data = "synthetic" if config_args.smoke_requested(arg) else "snips"  # Smoke: no download.
  return attack.build(
    config_args.parse_common(arg, **{**attack.ATTACK_ARGS, "model": "cnn"}, data=data)
  )


def get_sweep(arg: str | None = None) -> list[dict]:
  """ε sweep plus dropout and early-stopping defenses (names ``eps_*`` and ``defense_*``).

  Args:
    arg: ``seed=N`` (default 0).

  Returns:
    Override dicts for launch/sweep.py.
  """
  a = config_args.parse_arg(arg, seed=0)
  runs = [
    {"name": f"eps_{'inf' if e == float('inf') else f'{e:g}'}", "arg": f"eps={e},seed={a.seed}"}
    for e in EPSILONS
  ]
  runs.append({"name": "defense_dropout0.3", "arg": f"dropout=0.3,seed={a.seed}"})
  runs.append({"name": "defense_early_stop1ep", "arg": f"epochs=1,seed={a.seed}"})
  return runs
