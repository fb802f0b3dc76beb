"""Accounting oracles: dp_accounting called directly, the TF Privacy tutorial, calibration."""

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from trustml.core.validation import ConfigError
from trustml.privacy import accounting, aggregators

Q = 256 / 60000
STEPS = int(60 * 60000 / 256)  # 60 epochs of the TF Privacy MNIST tutorial.


def test_tf_privacy_tutorial_classic_conversion():
  # Published: q = 256/60000, sigma = 1.1, 60 epochs, delta = 1e-5 -> epsilon = 3.01.
  ev = accounting.run_event([(1.1, STEPS)], sampling="poisson", sampling_rate=Q)
  classic = accounting.epsilon(ev, 1e-5, conversion="classic")
  improved = accounting.epsilon(ev, 1e-5, conversion="improved")
  assert classic == pytest.approx(3.01, abs=0.01)
  assert improved < classic - 0.2


def test_epsilon_matches_dp_accounting_directly():
  event = dp_accounting.SelfComposedDpEvent(
    dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.3)), 500
  )
  direct_rdp = rdp.RdpAccountant(orders=accounting.RDP_ORDERS)
  direct_rdp.compose(event)
  ours = accounting.run_event([(1.3, 500)], sampling="poisson", sampling_rate=0.01)
  assert accounting.epsilon(ours, 1e-6) == pytest.approx(direct_rdp.get_epsilon(1e-6), rel=1e-12)
  direct_pld = pld.PLDAccountant()
  direct_pld.compose(event)
  got = accounting.epsilon(ours, 1e-6, accountant="pld")
  assert got == pytest.approx(direct_pld.get_epsilon(1e-6), rel=1e-9)
  assert got < accounting.epsilon(ours, 1e-6)  # PLD is tighter than RDP here.


@pytest.mark.parametrize("conversion", ["improved", "classic"])
@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_cached_step_curves_give_the_accountants_epsilon_bit_for_bit(sampling, conversion):
  # The ledger's fast path (one RDP curve per distinct step, scaled by counts) against
  # dp_accounting composing the whole event itself: exactly equal, for mixed schedules.
  for segs in ([(1.1, 100), (0.9, 37), (1.1, 5)], [(0.7, 1)], [(2.5, 3000), (1.0, 2)]):
    ev = accounting.run_event(segs, sampling=sampling, sampling_rate=0.01, dataset_size=20_000)
    direct = accounting.make_accountant("rdp", sampling, conversion)
    direct.compose(ev)
    got = accounting.epsilon(ev, 1e-5, sampling=sampling, conversion=conversion)
    assert got == float(direct.get_epsilon(1e-5))
  no_op = accounting.run_event([(1.0, 0)], sampling=sampling, sampling_rate=0.01, dataset_size=9)
  direct = accounting.make_accountant("rdp", sampling, conversion)
  assert accounting.epsilon(no_op, 1e-5, sampling=sampling, conversion=conversion) == float(
    direct.get_epsilon(1e-5)
  )
  non_private = dp_accounting.ComposedDpEvent(
    [
      dp_accounting.NonPrivateDpEvent(),
      accounting.run_event([(1.0, 3)], sampling=sampling, sampling_rate=0.01, dataset_size=20_000),
    ]
  )
  assert accounting.epsilon(non_private, 1e-5, sampling=sampling, conversion=conversion) == float(
    "inf"
  )


def test_cached_path_keeps_the_accountants_refusal_of_an_unsupported_event():
  # A Poisson event under replace-one: dp_accounting's RDP accountant refuses it; so do we.
  ev = accounting.run_event([(1.0, 3)], sampling="poisson", sampling_rate=0.01)
  with pytest.raises(dp_accounting.UnsupportedEventError):
    accounting.epsilon(ev, 1e-5, sampling="shuffle")


def test_largest_within_is_the_largest_n_that_fits():
  for max_steps in range(0, 40):
    for target in range(0, 45):
      calls = []

      def eps_at(n, calls=calls):
        calls.append(n)
        return float(n)

      assert accounting.largest_within(eps_at, target, max_steps) == min(target, max_steps)
      assert all(1 <= n <= max_steps for n in calls)


def test_schedule_is_composition_of_what_ran():
  segs = [(2.0, 100), (1.5, 50)]
  ev = accounting.run_event(segs, sampling="poisson", sampling_rate=0.02)
  acc = rdp.RdpAccountant(orders=accounting.RDP_ORDERS)
  for sigma, n in segs:
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(sigma)), n)
  assert accounting.epsilon(ev, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


def test_shuffle_event_is_sampling_without_replacement_replace_one():
  ev = accounting.step_event("shuffle", 0.01, 1.0, dataset_size=1000)
  assert isinstance(ev, dp_accounting.SampledWithoutReplacementDpEvent)
  assert (ev.source_dataset_size, ev.sample_size) == (1000, 10)
  acc = rdp.RdpAccountant(
    orders=accounting.RDP_ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
  )
  acc.compose(ev, 100)
  ours = accounting.epsilon(
    accounting.run_event([(1.0, 100)], sampling="shuffle", sampling_rate=0.01, dataset_size=1000),
    1e-5,
    sampling="shuffle",
  )
  assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
  with pytest.raises(ConfigError, match="accountant"):
    accounting.make_accountant("pld", "shuffle")


def test_calibration_round_trips():
  sigma = accounting.calibrate_noise_multiplier(
    2.0, 1e-5, schedule=[(1.0, 1000)], sampling="poisson", sampling_rate=0.01
  )
  ev = accounting.run_event([(sigma, 1000)], sampling="poisson", sampling_rate=0.01)
  eps = accounting.epsilon(ev, 1e-5)
  assert eps <= 2.0 and eps == pytest.approx(2.0, rel=0.01)
  steps = accounting.calibrate_steps(1.0, 2.0, 1e-5, sampling="poisson", sampling_rate=0.01)

  def eps_at(n):
    return accounting.epsilon(
      accounting.run_event([(1.0, n)], sampling="poisson", sampling_rate=0.01), 1e-5
    )

  assert eps_at(steps) <= 2.0 < eps_at(steps + 1)


def test_adaptive_effective_sigma_round_trips():
  # Gradient std 1.2 C on sensitivity C; count std 10 on sensitivity ½.
  eff = aggregators.effective_noise_multiplier(1.2, 1.0, 10.0, 0.5)
  assert eff == pytest.approx((1.2**-2 + 20.0**-2) ** -0.5)
  assert accounting.grad_noise_multiplier(eff, 10.0) == pytest.approx(1.2)
  with pytest.raises(ConfigError):
    accounting.grad_noise_multiplier(1.0, 0.4)


def test_classic_conversion_calibrates_with_the_classic_conversion():
  # Audit A7: σ calibrated with the improved conversion stopped 'classic' runs at 195 of 300.
  for conv in ("improved", "classic"):
    z = accounting.calibrate_noise_multiplier(
      1.0, 1e-5, schedule=[(1.0, 300)], sampling="poisson", sampling_rate=0.032, conversion=conv
    )
    ev = accounting.run_event([(z, 300)], sampling="poisson", sampling_rate=0.032)
    eps = accounting.epsilon(ev, 1e-5, conversion=conv)
    assert eps <= 1.0 and eps == pytest.approx(1.0, rel=0.01), conv


def test_pld_calibration_is_bounded_at_realistic_settings():
  # Audit A9: SNIPS settings (q = 1024/13,784, 404 steps, ε = 3) asked numpy for 38 GiB.
  q, steps = 1024 / 13_784, 404
  z = accounting.calibrate_noise_multiplier(
    3.0, 1e-5, schedule=[(1.0, steps)], sampling="poisson", sampling_rate=q, accountant="pld"
  )
  ev = accounting.run_event([(z, steps)], sampling="poisson", sampling_rate=q)
  eps = accounting.epsilon(ev, 1e-5, accountant="pld")
  assert eps <= 3.0 and eps == pytest.approx(3.0, rel=0.02)
  z_rdp = accounting.calibrate_noise_multiplier(
    3.0, 1e-5, schedule=[(1.0, steps)], sampling="poisson", sampling_rate=q
  )
  assert z < z_rdp  # PLD is tighter: less noise for the same ε.


def test_infinite_target_epsilon_is_one_error_line():
  with pytest.raises(ConfigError, match="target_epsilon=inf is invalid"):
    accounting.calibrate_noise_multiplier(
      float("inf"), 1e-5, schedule=[(1.0, 10)], sampling="poisson", sampling_rate=0.1
    )


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(sampling="poisson", sampling_rate=0.0, noise_multiplier=1.0),
    dict(sampling="poisson", sampling_rate=1.5, noise_multiplier=1.0),
    dict(sampling="poisson", sampling_rate=0.1, noise_multiplier=-1.0),
    dict(sampling="bogus", sampling_rate=0.1, noise_multiplier=1.0),
  ],
)
def test_bad_step_arguments(kwargs):
  with pytest.raises(ConfigError):
    accounting.step_event(**kwargs)


def test_bad_delta():
  ev = accounting.run_event([(1.0, 10)], sampling="poisson", sampling_rate=0.1)
  for delta in (0.0, 1.0, -0.1):
    with pytest.raises(ConfigError, match="delta"):
      accounting.epsilon(ev, delta)


def test_negative_or_zero_steps_are_one_error_line():
  with pytest.raises(ConfigError, match="num_steps=-5 is invalid"):
    accounting.run_event([(1.0, -5)], sampling="poisson", sampling_rate=0.1)
  with pytest.raises(ConfigError, match="num_steps"):
    accounting.calibrate_noise_multiplier(
      1.0, 1e-5, schedule=[(1.0, -3)], sampling="poisson", sampling_rate=0.1
    )
  with pytest.raises(ConfigError, match="num_steps=0"):
    accounting.calibrate_noise_multiplier(
      1.0, 1e-5, schedule=[(1.0, 0)], sampling="poisson", sampling_rate=0.1
    )
