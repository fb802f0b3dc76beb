"""Packing: shapes, masks, every row once per epoch, device padding, empty client."""

import numpy as np
import pytest
from fed_tiny_model import arrays

from trustml.core.validation import ConfigError
from trustml.federated import packing


def test_pack_shapes_masks_and_coverage():
  arr = arrays(100)
  arr["index"] = np.arange(100, dtype=np.int32)
  rows = [np.arange(0, 3), np.arange(10, 20), np.arange(30, 35)]
  p = packing.pack(
    arr,
    rows,
    batch_size=4,
    local_epochs=1,
    client_multiple=4,
    keys=("tokens", "mask", "label", "weight", "index"),
  )
  assert p["batch"]["tokens"].shape == (4, 4, 4, arr["tokens"].shape[1])  # 3 steps -> bucket 4
  np.testing.assert_array_equal(p["step_mask"].sum(1), [1, 3, 2, 0])
  np.testing.assert_array_equal(p["weight"], [3, 10, 5, 0])
  for c, r in enumerate(rows):
    got = p["batch"]["index"][c][p["batch"]["weight"][c] > 0]
    assert sorted(got.tolist()) == r.tolist()  # one epoch: every row exactly once
    # padding rows only inside real steps' last batch or in masked steps
    assert p["batch"]["weight"][c][p["step_mask"][c] == 0].sum() == 0
  assert p["batch"]["weight"][3].sum() == 0


def test_epochs_and_caps():
  arr = arrays(50)
  p = packing.pack(arr, [np.arange(10)], batch_size=4, local_epochs=2, max_steps=5)
  assert p["step_mask"].sum() == 5 and p["step_mask"].shape[1] == 8
  p = packing.pack(arr, [np.arange(10)], batch_size=4, local_epochs=2, num_steps=6)
  assert p["step_mask"].shape[1] == 6 and p["step_mask"].sum() == 6
  assert packing.bucket(5) == 8 and packing.bucket(5, 3) == 6 and packing.bucket(8) == 8


def test_empty_client_rejected():
  with pytest.raises(ConfigError, match="empty"):
    packing.pack(arrays(10), [np.arange(3), np.array([], np.int64)], batch_size=2)
