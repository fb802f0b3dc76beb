"""Shared pytest fixtures: repo root on sys.path, the real-data folder, tiny batches."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))  # `from configs import nlu`, `launch.*` in tests.

from trustml.data import paths  # noqa: E402


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The folder of real datasets; skips the test with a clear reason when it is absent."""
  d = paths.resolve_data_dir(None)
  if d is None or not d.is_dir():
    pytest.skip(
      f"shared data folder not found: set ${paths.ENV_VAR} or place it at {paths.default_shared_dir()}"
    )
  return d


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  """The checkout root."""
  return ROOT


def run_on_fake_devices(script: str, test_dir: pathlib.Path, num_devices: int = 4) -> None:
  """Runs ``script`` in a fresh Python with ``num_devices`` fake CPU devices; asserts it prints OK.

  XLA_FLAGS must be set before jax is imported, hence the subprocess. The script finds
  ``test_dir`` (for the tests' helper modules) in ``$TEST_DIR`` and the repo on ``PYTHONPATH``.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["TEST_DIR"] = str(test_dir)
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def conv_dim_labels(compiled_hlo: str) -> list[str]:
  """The ``dim_labels`` of every convolution in compiled HLO text (``b0f_0io->b0f`` is the
  layout XLA:CPU's convolution library runs; see ``trustml/core/conv_layout.py``)."""
  return [
    line.split("dim_labels=")[1].split(",")[0]
    for line in compiled_hlo.splitlines()
    if " convolution(" in line
  ]


def make_batch(batch_size: int = 4, seq_len: int = 8, vocab: int = 50, classes: int = 3, seed=0):
  """A random classifier batch with some padding positions."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, vocab, (batch_size, seq_len)).astype(np.int32)
  lengths = rng.integers(2, seq_len + 1, batch_size)
  mask = np.arange(seq_len)[None] < lengths[:, None]
  tokens = np.where(mask, tokens, 0).astype(np.int32)
  return {
    "tokens": tokens,
    "mask": mask,
    "label": rng.integers(0, classes, batch_size).astype(np.int32),
    "weight": np.ones(batch_size, np.float32),
    "group": rng.integers(0, 2, batch_size).astype(np.int32),
    "user_id": np.arange(batch_size, dtype=np.int32),
    "index": np.arange(batch_size, dtype=np.int32),
  }


def pytest_configure(config):
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
