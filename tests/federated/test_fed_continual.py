"""Continual FL storage: the cap is never exceeded; each deletion policy keeps what it says."""

import numpy as np
import pytest

from trustml.core.validation import ConfigError
from trustml.federated import continual


@pytest.mark.parametrize("policy", continual.POLICIES)
def test_cap_never_exceeded_random_arrivals(policy):
  gen = np.random.default_rng(0)
  rows = [np.arange(k * 1000, k * 1000 + gen.integers(1, 200)) for k in range(20)]
  periods = continual.arrival_periods(rows, 8, process="random", seed=1)
  for cap in (1, 3, 17):
    storage = continual.Storage(20, cap, policy, seed=2)
    for t in range(8):
      storage.ingest(rows, periods, t)
      assert storage.sizes().max() <= cap
      for k, stored in enumerate(storage.rows()):
        assert set(stored.tolist()) <= set(rows[k][periods[k] <= t].tolist())
        seen = int((periods[k] <= t).sum())
        if seen <= cap:  # everything fits: no policy may drop a row
          assert len(stored) == seen
        elif policy != "drop_previous_period":
          assert len(stored) == cap
        else:  # whole periods are deleted: the newest period is always complete
          newest = rows[k][periods[k] == t]
          assert set(newest[-cap:].tolist()) <= set(stored.tolist())


def test_audit_b1_no_row_dropped_while_everything_fits():
  """Audit B1: cap 10, 4 stored + 4 new -> all 8 kept (the old slice kept rows 2-7)."""
  for policy in continual.POLICIES:
    store = continual.ClientStore(cap=10, policy=policy)
    store.add([0, 1, 2, 3], period=0, gen=np.random.default_rng(0))
    store.add([4, 5, 6, 7], period=1, gen=np.random.default_rng(0))
    assert store.rows == list(range(8)), policy


@pytest.mark.parametrize("policy", continual.POLICIES)
def test_no_drop_while_fits_on_a_grid(policy):
  """Every (old, new, cap) with old + new <= cap keeps all rows; otherwise the cap binds."""
  for cap in range(1, 9):
    for n_old in range(0, cap + 1):
      for n_new in range(0, 2 * cap + 1):
        store = continual.ClientStore(cap=cap, policy=policy)
        store.add(list(range(n_old)), period=0, gen=np.random.default_rng(0))
        store.add(list(range(100, 100 + n_new)), period=1, gen=np.random.default_rng(0))
        if n_old + n_new <= cap:
          assert len(store.rows) == n_old + n_new
        else:
          assert len(store.rows) <= cap


def test_drop_previous_period_deletes_whole_periods():
  store = continual.ClientStore(cap=5, policy="drop_previous_period")
  store.add([0, 1, 2, 3], period=0, gen=np.random.default_rng(0))
  store.add([4, 5], period=1, gen=np.random.default_rng(0))
  assert store.rows == [4, 5]  # period 0 went as a whole; drop_oldest would keep [1..5]
  store.add([6, 7], period=2, gen=np.random.default_rng(0))
  assert store.rows == [4, 5, 6, 7]  # fits: nothing dropped
  store.add(list(range(10, 17)), period=3, gen=np.random.default_rng(0))
  assert store.rows == [12, 13, 14, 15, 16]  # new period alone over the cap: its newest 5


def test_policies_keep_the_right_rows():
  rows = [np.arange(10)]
  periods = [np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])]
  old = continual.Storage(1, 5, "drop_oldest")
  prev = continual.Storage(1, 5, "drop_previous_period")
  for t in range(3):
    old.ingest(rows, periods, t)
    prev.ingest(rows, periods, t)
    if t == 1:
      assert old.rows()[0].tolist() == [1, 2, 3, 4, 5]
      assert prev.rows()[0].tolist() == [4, 5]  # period 0 deleted as a whole
  assert old.rows()[0].tolist() == [5, 6, 7, 8, 9]
  assert prev.rows()[0].tolist() == [6, 7, 8, 9]
  prev2 = continual.Storage(1, 6, "drop_previous_period")
  prev2.ingest(rows, periods, 0)
  prev2.ingest(rows, periods, 1)
  assert prev2.rows()[0].tolist() == [0, 1, 2, 3, 4, 5]  # fits: nothing dropped


def test_reservoir_is_uniform_over_history():
  """Each of 50 rows is kept with probability cap/50 = 0.2; z-test |z|<4.5 per row (fixed seed)."""
  rows = [np.arange(50)]
  periods = [np.arange(50) // 10]
  counts = np.zeros(50)
  trials = 2000
  for s in range(trials):
    st = continual.Storage(1, 10, "reservoir", seed=s)
    for t in range(5):
      st.ingest(rows, periods, t)
    counts[st.rows()[0]] += 1
  z = (counts / trials - 0.2) / np.sqrt(0.2 * 0.8 / trials)
  assert np.all(np.abs(z) < 4.5)


def test_arrivals_and_state_roundtrip():
  rows = [np.arange(7), np.arange(100, 103)]
  per = continual.arrival_periods(rows, 3)
  assert per[0].tolist() == [0, 0, 0, 1, 1, 2, 2] and per[1].tolist() == [0, 1, 2]
  st = continual.Storage(2, 4, "reservoir", seed=0)
  st.ingest(rows, per, 0)
  st2 = continual.Storage(2, 4, "reservoir", seed=0)
  st2.load_state_dict(st.state_dict())
  st.ingest(rows, per, 1)
  st2.ingest(rows, per, 1)
  assert [r.tolist() for r in st.rows()] == [r.tolist() for r in st2.rows()]
  np.testing.assert_array_equal(continual.rows_in_periods(rows, per, [2]), [5, 6, 102])


def test_bad_input():
  with pytest.raises(ConfigError, match="storage_cap"):
    continual.Storage(3, 0, "drop_oldest")
  with pytest.raises(ConfigError, match="deletion_policy"):
    continual.Storage(3, 2, "drop_random")
  with pytest.raises(ConfigError, match="num_periods"):
    continual.arrival_periods([np.arange(3)], 0)
