"""Ledger oracles: budget stop, checkpoint round trip, truncation δ."""

import json
import math

import pytest

from trustml.privacy import accounting, ledger


def _ledger(**kw):
  args = dict(
    sampling="poisson", sampling_rate=0.05, delta=1e-5, noise_fn=lambda s: 1.0, max_steps=10_000
  )
  args.update(kw)
  return ledger.PrivacyLedger(**args)


def test_budget_stop_never_exceeds_target():
  led = _ledger(target_epsilon=1.5, noise_fn=lambda s: 2.0)
  step = 0
  while True:
    ok, reason = led.can_step(step)
    if not ok:
      break
    led.record(step, {"dp/num_examples": 10.0})
    step += 1
  assert "budget" in reason
  assert led.epsilon() <= 1.5
  assert step == accounting.calibrate_steps(2.0, 1.5, 1e-5, sampling="poisson", sampling_rate=0.05)
  assert step > 100
  one_more = accounting.run_event([(2.0, step + 1)], sampling="poisson", sampling_rate=0.05)
  assert accounting.epsilon(one_more, 1e-5) > 1.5
  assert led.summary()["privacy/budget_stopped"] is True
  assert led.summary()["privacy/num_examples"] == 10.0 * step


def test_schedule_and_resume_give_same_epsilon():
  def noise_fn(s):
    return 2.0 * 0.9 ** (s // 20)

  full = _ledger(noise_fn=noise_fn)
  for s in range(60):
    full.record(s, {})
  first = _ledger(noise_fn=noise_fn)
  for s in range(25):
    first.record(s, {})
  state = json.loads(json.dumps(first.state_dict()))  # Through JSON, as in the checkpoint.
  resumed = _ledger(noise_fn=noise_fn)
  resumed.load_state_dict(state)
  for s in range(25, 60):
    assert resumed.can_step(s)[0]
    resumed.record(s, {})
  assert resumed.epsilon() == full.epsilon()
  segs = [(2.0 * 0.9**k, 20) for k in range(3)]
  direct = accounting.run_event(segs, sampling="poisson", sampling_rate=0.05)
  assert full.epsilon() == pytest.approx(accounting.epsilon(direct, 1e-5), rel=1e-12)
  with pytest.raises(ValueError):
    resumed.record(3, {})


def test_truncation_adds_to_delta():
  led = _ledger(truncation_prob=1e-9)
  for s in range(10):
    led.record(s, {})
  summ = led.summary()
  eps = summ["privacy/epsilon"]
  assert summ["privacy/truncation_delta"] == pytest.approx((1 + math.exp(eps)) * 1e-8)
  assert summ["privacy/total_delta"] == pytest.approx(1e-5 + summ["privacy/truncation_delta"])


def test_adaptive_clip_norm_lives_in_the_ledger():
  led = _ledger(clip_update_fn=lambda c, aux: c * 2.0, initial_clip_norm=0.5)
  led.record(0, {})
  assert led.state_dict()["clip_norm"] == 1.0
