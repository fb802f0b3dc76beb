"""Device selection study: uniform vs activity-based sampling, static vs continual FL.

Launch:
  python -m launch.federated --config=configs/fed_selection.py:sampler=activity --workdir=/tmp/sel
  python -m launch.federated --config=configs/fed_selection.py:sampler=uniform,setting=continual \
      --workdir=/tmp/sel_cont
  python -m launch.federated --config=configs/fed_selection.py:data=tiny_shakespeare,sampler=activity \
      --workdir=/tmp/sel_shakes
  python -m launch.sweep --config=configs/fed_selection.py --sweep_arg=data=synthetic,seeds=3 \
      --launcher=launch.federated --workdir=/tmp/sel_sweep
  # The README's Tiny Shakespeare table: 2 settings x 2 samplers x 2 weightings x 5 seeds.
  python -m launch.sweep --config=configs/fed_selection.py --sweep_arg=selection_study \
      --launcher=launch.federated --workdir=runs/selection_study --workers=2

Args: every arg of the base config (``configs/fed_nlu.py`` for the embedded corpus,
``configs/fed_lm_shakespeare.py`` for tiny_shakespeare), plus
  sampler: uniform | activity.
  setting: static | continual.
  beta: activity exponent (probability propto n_i^beta).
  policy: continual deletion policy (drop_oldest | drop_previous_period | reservoir).
  cap: continual per-client storage cap.
  periods: continual time periods.
  weighting: aggregation weighting, '' (follows the sampler, below) | num_examples | uniform |
    inverse_probability.
  selection_study: the Tiny Shakespeare study scale (:data:`STUDY`: every speaker with >= 2
    training speeches, the smallest LM the configs build, enough rounds for the curves to flatten).

By default the aggregation weighting follows the sampler so that each pair targets the
example-weighted objective in expectation (``trustml.federated.selection``: under the default
self-normalised estimator this holds only asymptotically): uniform + num_examples,
activity(beta=1) + uniform. activity + num_examples weights heavy clients twice (n_i^2).
"""

import ml_collections

from trustml.configs import fed_lm_shakespeare, fed_nlu, nlu
from trustml.core import config_args

_OWN = dict(
  sampler="uniform",
  setting="static",
  beta=1.0,
  policy="drop_oldest",
  cap=0,
  periods=4,
  weighting="",
  selection_study=False,
)
# The selection study on Tiny Shakespeare: all speakers (min_speeches=1; the natural partition
# keeps the 248 with >= 2 training speeches), smoke-size LM (width 16, 1 block), 48-char speeches.
STUDY = dict(
  data="tiny_shakespeare",
  min_speeches=1,
  width=16,
  layers=1,
  max_len=48,
  per_round=10,
  rounds=600,
)
STUDY_EVAL_EVERY = 25
_ALL_ARGS = {
  **config_args.COMMON,
  **fed_nlu.FED_ARGS,
  **fed_lm_shakespeare.LM_ARGS,
  **_OWN,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the selection-study config for ``arg`` (see module docstring)."""
  arg = _with_study(arg)
  shakes = config_args.parse_arg(arg, **_ALL_ARGS).data == "tiny_shakespeare"
  smoke = config_args.smoke_requested(arg)
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
  # Paired default: uniform sampling + n_i weights; activity (beta=1) sampling + uniform weights.
  paired = "num_examples" if a.sampler == "uniform" else "uniform"
  config.selection.weighting = a.weighting or paired
  if a.selection_study:
    config.federated.eval_every = STUDY_EVAL_EVERY  # The perplexity curve, 24 points.
  config.federated.setting = a.setting
  config.continual.deletion_policy = a.policy
  config.continual.num_periods = config_args.smoke_value(a, "periods", 3)  # Explicit wins.
  if a.cap:
    config.continual.storage_cap = a.cap
  return config


def _with_study(arg: str | None) -> str | None:
  """Expands ``selection_study`` into the :data:`STUDY` args (explicit args win)."""
  if "selection_study" not in config_args.given(arg):
    return arg
  given = config_args.given(arg)
  study = [f"{k}={v}" for k, v in STUDY.items() if k not in given]
  return ",".join([*study, arg])


def get_sweep(arg: str | None = None) -> list[dict]:
  """sampler x setting x seeds (for launch/sweep.py with --launcher=launch.federated).

  Args:
    arg: ``data=synthetic|tiny_shakespeare,seeds=3,rounds=40,smoke``, or
      ``selection_study[,seeds=5,rounds=600,smoke]``: setting x sampler x weighting
      (num_examples, uniform) x seeds at the :data:`STUDY` scale.

  Returns:
    Override dicts ``{"name", "arg"}``.
  """
  if "selection_study" in config_args.given(arg):
    return _study_sweep(arg)
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


def _study_sweep(arg: str) -> list[dict]:
  """The 2 settings x 2 samplers x 2 weightings x ``seeds`` runs of the selection study."""
  a = config_args.parse_arg(arg, selection_study=True, seeds=5, rounds=STUDY["rounds"], smoke=False)
  extra = f"selection_study,rounds={a.rounds}" + (",smoke" if a.smoke else "")
  return [
    {
      "name": f"{setting}_{sampler}_w{weighting}_s{s}",
      "arg": f"{extra},sampler={sampler},weighting={weighting},setting={setting},seed={s}",
    }
    for s in range(a.seeds)  # Seeds outermost: a partial sweep still compares all eight cells.
    for setting in ("static", "continual")
    for sampler in ("uniform", "activity")
    for weighting in ("num_examples", "uniform")
  ]
