"""Device selection study: uniform vs activity-based sampling, static vs continual FL.

Launch:
  python -m launch.federated --config=configs/fed_selection.py:sampler=activity --workdir=/tmp/sel
  python -m launch.federated --config=configs/fed_selection.py:sampler=uniform,setting=continual \
      --workdir=/tmp/sel_cont
  python -m launch.federated --config=configs/fed_selection.py:data=tiny_shakespeare,sampler=activity \
      --workdir=/tmp/sel_shakes
  python -m launch.sweep --config=configs/fed_selection.py --sweep_arg=data=synthetic,seeds=3 \
      --launcher=launch.federated --workdir=/tmp/sel_sweep

Args: every arg of the base config (``configs/fed_nlu.py`` for the embedded corpus,
``configs/fed_lm_shakespeare.py`` for tiny_shakespeare), plus
  sampler: uniform | activity.
  setting: static | continual.
  beta: activity exponent (probability propto n_i^beta).
  policy: continual deletion policy (drop_oldest | drop_previous_period | reservoir).
  cap: continual per-client storage cap.
  periods: continual time periods.

Aggregation weighting follows the sampler so each pair is unbiased for the example-weighted
objective: uniform + num_examples, activity(beta=1) + uniform.
"""

import ml_collections

from trustml.configs import fed_lm_shakespeare, fed_nlu, nlu
from trustml.core import config_args

_OWN = dict(sampler="uniform", setting="static", beta=1.0, policy="drop_oldest", cap=0, periods=4)
_ALL_ARGS = {
  **config_args.COMMON,
  **fed_nlu.FED_ARGS,
  **fed_lm_shakespeare.LM_ARGS,
  **_OWN,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the selection-study config for ``arg`` (see module docstring)."""
  shakes = config_args.parse_arg(arg, **_ALL_ARGS).data == "tiny_shakespeare"
  smoke = "smoke" in config_args.given(arg)
  fed = dict(fed_nlu.FED_ARGS)
  if shakes and not smoke:
    fed.update(per_round=10, rounds=40)  # fed_lm_shakespeare's defaults.
  a = config_args.parse_common(arg, **fed, **fed_lm_shakespeare.LM_ARGS, **_OWN)
  if shakes:
    config = fed_lm_shakespeare.add_language_model(fed_nlu.add_federated(nlu.build(a), a), a)
  else:
    config = fed_nlu.add_federated(nlu.build(a), a)
  config.selection.sampler = a.sampler
  config.selection.beta = a.beta
  # Unbiased pairs: uniform sampling + n_i weights; activity (beta=1) sampling + uniform weights.
  config.selection.weighting = "num_examples" if a.sampler == "uniform" else "uniform"
  config.federated.setting = a.setting
  config.continual.deletion_policy = a.policy
  config.continual.num_periods = config_args.smoke_value(a, "periods", 3)  # Explicit wins.
  if a.cap:
    config.continual.storage_cap = a.cap
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """sampler x setting x seeds (for launch/sweep.py with --launcher=launch.federated).

  Args:
    arg: ``data=synthetic|tiny_shakespeare,seeds=3,rounds=40,smoke``.

  Returns:
    Override dicts ``{"name", "arg"}``.
  """
  a = config_args.parse_arg(arg, data="synthetic", seeds=3, rounds=40, smoke=False)
  extra = f"data={a.data},rounds={a.rounds}" + (",smoke" if a.smoke else "")
  if a.data == "tiny_shakespeare" and not a.smoke:
    extra += ",max_len=48,width=32,layers=1,min_speeches=20"  # CPU-sized LM for the sweep.
  return [
    {
      "name": f"{a.data}_{sampler}_{setting}_s{s}",
      "arg": f"{extra},sampler={sampler},setting={setting},seed={s}",
    }
    for s in range(a.seeds)  # Seeds outermost: a partial sweep still compares all four cells.
    for sampler in ("uniform", "activity")
    for setting in ("static", "continual")
  ]
