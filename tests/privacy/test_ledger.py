"""Ledger oracles: budget stop from history + plan, records -> dp_accounting, resume, refusal."""

import json
import math

import pytest

from trustml.core import rng as rng_lib
from trustml.core.validation import ConfigError
from trustml.privacy import accounting, aggregators, ledger

AGG = aggregators.ClippedAggregator(unit="example", relation="add_or_remove_one")


def _plan(z=1.0, q=0.05, trunc=0.0):
  def plan(step):
    zz = z(step) if callable(z) else z
    return ledger.StepRecord("poisson", q, 10_000, 0, zz, trunc)

  return plan


def _aux(z, clip=1.0, count_std=0.0, count_sens=0.5):
  return {
    "dp/noise_std": z * clip,
    "dp/sensitivity": clip,
    "dp/count_noise_std": count_std,
    "dp/count_sensitivity": count_sens,
    "dp/l2_clip_norm": clip,
    "dp/noise_multiplier": z,
  }


def _ledger(**kw):
  args = dict(aggregator=AGG, plan_fn=_plan(), delta=1e-5, max_steps=10_000)
  args.update(kw)
  return ledger.PrivacyLedger(**args)


def test_budget_stop_never_exceeds_target():
  led = _ledger(target_epsilon=1.5, plan_fn=_plan(2.0))
  step = 0
  while True:
    ok, reason = led.can_step(step)
    if not ok:
      break
    led.record(step, _aux(2.0))
    step += 1
  assert "budget" in reason
  assert led.epsilon() <= 1.5
  assert step == accounting.calibrate_steps(2.0, 1.5, 1e-5, sampling="poisson", sampling_rate=0.05)
  assert step > 100
  one_more = accounting.run_event([(2.0, step + 1)], sampling="poisson", sampling_rate=0.05)
  assert accounting.epsilon(one_more, 1e-5) > 1.5
  summ = led.summary()
  assert summ["privacy/budget_stopped"] is True
  assert not any("num_" in k for k in summ)  # No exact private statistic by default.


def test_epsilon_is_rederived_from_the_records_with_dp_accounting():
  led = _ledger(plan_fn=_plan(lambda s: 2.0 * 0.9 ** (s // 20)))
  for s in range(60):
    led.record(s, _aux(2.0 * 0.9 ** (s // 20)))
  segs = led.summary()["privacy/ledger"]
  assert [n for _, n in segs] == [20, 20, 20]
  events = [
    accounting.step_event(r["sampling"], r["sampling_rate"], r["noise_multiplier"]) for r, _ in segs
  ]
  acc = accounting.make_accountant("rdp", "poisson")
  for ev, (_, n) in zip(events, segs, strict=True):
    acc.compose(ev, n)
  assert led.epsilon() == acc.get_epsilon(1e-5)


def test_what_ran_is_accounted_not_the_plan():
  # The step ran with half the planned noise (e.g. a changed σ): the record holds what ran.
  led = _ledger(plan_fn=_plan(2.0), target_epsilon=5.0)
  assert led.can_step(0)[0]
  rec = led.record(0, _aux(1.0))
  assert rec.noise_multiplier == pytest.approx(1.0)
  ev = accounting.run_event([(1.0, 1)], sampling="poisson", sampling_rate=0.05)
  assert led.epsilon() == pytest.approx(accounting.epsilon(ev, 1e-5), rel=1e-6)


def test_adaptive_count_query_is_composed_with_its_sensitivity():
  # Gradient std σ_g C on sensitivity C, count std σ_b on sensitivity ½ (centred, add/remove).
  sg, sb = 1.3, 4.0
  z = (sg**-2 + (0.5 / sb) ** 2) ** -0.5
  led = _ledger(plan_fn=_plan(z))
  rec = led.record(0, {**_aux(sg, clip=0.7), "dp/count_noise_std": sb, "dp/count_sensitivity": 0.5})
  assert rec.noise_multiplier == pytest.approx(z)


def test_resume_gives_same_epsilon_and_secret():
  plan = _plan(lambda s: 2.0 * 0.9 ** (s // 20))
  full = _ledger(plan_fn=plan)
  for s in range(60):
    full.record(s, _aux(plan(s).noise_multiplier))
  first = _ledger(plan_fn=plan)
  for s in range(25):
    first.record(s, _aux(plan(s).noise_multiplier))
  state = json.loads(json.dumps(first.state_dict()))  # Through JSON, as in the checkpoint.
  resumed = _ledger(plan_fn=plan)
  assert resumed.secret != first.secret  # A fresh ledger draws fresh OS entropy.
  resumed.load_state_dict(state)
  assert resumed.secret == first.secret
  for s in range(25, 60):
    assert resumed.can_step(s)[0]
    resumed.record(s, _aux(plan(s).noise_multiplier))
  assert resumed.epsilon() == full.epsilon()
  with pytest.raises(ValueError):
    resumed.record(3, _aux(1.0))


def test_checkpoint_of_another_config_is_refused():
  a = _ledger(fingerprint="aaa", config={"privacy": {"target_epsilon": 3.0}})
  a.record(0, _aux(1.0))
  b = _ledger(fingerprint="bbb", config={"privacy": {"target_epsilon": 2.0}})
  with pytest.raises(ConfigError, match="target_epsilon: 3.0 -> 2.0"):
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))


def test_budget_after_resume_counts_the_recorded_history():
  # Audit A5(b): 300 steps at σ = 0.8, resumed with σ = 2.0 planned: the stop uses history too.
  first = _ledger(plan_fn=_plan(0.8, q=0.02), target_epsilon=3.0, max_steps=2000)
  n = 0
  while n < 300 and first.can_step(n)[0]:
    first.record(n, _aux(0.8))
    n += 1
  resumed = _ledger(plan_fn=_plan(2.0, q=0.02), target_epsilon=3.0, max_steps=2000)
  resumed.load_state_dict(first.state_dict())
  while n < 2000 and resumed.can_step(n)[0]:
    resumed.record(n, _aux(2.0))
    n += 1
  assert resumed.epsilon() <= 3.0
  assert resumed.summary()["privacy/budget_stopped"] is True


def test_truncation_adds_to_delta():
  led = _ledger(plan_fn=_plan(1.0, trunc=1e-9))
  for s in range(10):
    led.record(s, _aux(1.0))
  summ = led.summary()
  eps = summ["privacy/epsilon"]
  assert summ["privacy/truncation_delta"] == pytest.approx((1 + math.exp(eps)) * 1e-8)
  assert summ["privacy/total_delta"] == pytest.approx(1e-5 + summ["privacy/truncation_delta"])


def test_unsafe_stats_only_when_asked_and_then_marked_uncovered():
  safe = _ledger()
  safe.record(0, {**_aux(1.0), "unsafe/num_clipped": 3.0})
  assert "unsafe/num_clipped" not in safe.summary()
  assert safe.summary()["privacy/covered_by_epsilon"] is True
  unsafe = _ledger(release_unsafe_stats=True)
  unsafe.record(0, {**_aux(1.0), "unsafe/num_clipped": 3.0})
  assert unsafe.summary()["unsafe/num_clipped"] == 3.0
  assert unsafe.summary()["privacy/covered_by_epsilon"] is False


def test_fixed_noise_seed_is_reproducible_and_says_so():
  a = _ledger(secret=rng_lib.SecretStreams.from_seed(7), noise_seed_fixed=True)
  b = _ledger(secret=rng_lib.SecretStreams.from_seed(7), noise_seed_fixed=True)
  assert (a.secret.key_data("dp_noise") == b.secret.key_data("dp_noise")).all()
  assert "secret" in a.summary()["privacy/guarantee_note"]
  fresh = _ledger()
  fresh.record(0, _aux(1.0))
  text = json.dumps(fresh.summary()) + json.dumps(fresh.progress())
  assert fresh.secret.to_hex() not in text and "secret" not in text
