"""Real multi-process runs: 2 processes x 2 fake CPU devices (gloo) == 1 process x 4 devices.

Each launch script is started as 2 OS processes on 127.0.0.1 (a free port), which find each
other through ``jax.distributed`` and run one SPMD program over 4 global devices. The oracle is
the same command in 1 process with 4 fake devices: ``summary.json`` agrees (ε identical,
losses and accuracy within 1e-5 relative), process 1 computed the same summary (the privacy
ledger is identical on every process) but wrote nothing, and a 2-process run killed after its
first checkpoint and restarted ends with the same summary as the uninterrupted one.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from trustml.core import distributed
from trustml.core.validation import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]
DP_CONFIG = "configs/dp_nlu.py:smoke"
# The DP noise and Poisson coins come from fresh OS entropy unless privacy.noise_seed is set;
# comparing two runs needs the same draws, so these runs fix it.
DP_FLAGS = ("--config.privacy.noise_seed=0",)
FED_CONFIG = "configs/fed_nlu.py:smoke"
COMPARED = ("eval/loss", "eval/accuracy", "privacy/epsilon", "train/steps", "fed/rounds")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  for name in (distributed.ENV_ADDRESS, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
    env.pop(name, None)
  return env


def _start(module, config, workdir, processes, devices, flags=()):
  port = _free_port()
  procs = []
  for pid in range(processes):
    cmd = [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}", *flags]
    if processes > 1:
      cmd += [
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={processes}",
        f"--process_id={pid}",
      ]
    procs.append(
      subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
      )
    )
  return procs


def _communicate_all(procs, timeout: float) -> list[tuple[str, str]]:
  """(stdout, stderr) of every process, all pipes drained at once.

  Draining one process at a time can deadlock: a peer blocked on a full stderr pipe (the
  coordination service logs while it waits) never reaches the collective or the shutdown
  barrier the first process is waiting in. On timeout every process is killed.
  """
  results: list = [None] * len(procs)

  def drain(i, p):
    results[i] = p.communicate()

  threads = [threading.Thread(target=drain, args=(i, p), daemon=True) for i, p in enumerate(procs)]
  for t in threads:
    t.start()
  deadline = time.time() + timeout
  for t in threads:
    t.join(max(0.0, deadline - time.time()))
  if any(t.is_alive() for t in threads):
    for q in procs:
      try:
        os.killpg(q.pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        q.kill()
    for t in threads:
      t.join(30)
    raise subprocess.TimeoutExpired([str(q.args) for q in procs], timeout)
  return results


def _finish(procs) -> list[dict]:
  """Waits for every process; returns the summary JSON each printed."""
  outs = []
  for p, (stdout, stderr) in zip(procs, _communicate_all(procs, 400), strict=True):
    assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
    start = stdout.index("{")
    outs.append(json.JSONDecoder().raw_decode(stdout[start:])[0])
  return outs


def _run(module, config, workdir, processes, devices, flags=()) -> list[dict]:
  return _finish(_start(module, config, workdir, processes, devices, flags))


def _same(got: dict, want: dict) -> None:
  for k in COMPARED:
    if k not in want:
      continue
    a, b = float(got[k]), float(want[k])
    if k == "privacy/epsilon":
      assert a == b, (k, a, b)
    else:
      assert abs(a - b) <= 1e-5 * max(abs(b), 1e-12), (k, a, b)


def _summary(workdir: pathlib.Path) -> dict:
  return json.loads((workdir / "summary.json").read_text())


def _check_same_run(one_dir, two_dir, one, two) -> None:
  _same(_summary(two_dir), _summary(one_dir))
  _same(two[0], one)
  _same(two[1], two[0])  # Process 1 computed the same summary (its ledger too) ...
  if "privacy/epsilon" in one:
    assert two[1]["privacy/epsilon"] == two[0]["privacy/epsilon"]
  # ... and process 0 alone wrote the run contract: one line per event, not two.
  lines = lambda d: (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
  assert len(lines(two_dir)) == len(lines(one_dir)) > 0


def _kill_after_first_checkpoint(procs, workdir: pathlib.Path, step: int) -> None:
  first = workdir / "checkpoints" / str(step)
  deadline = time.time() + 400
  while not first.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
    time.sleep(0.02)
  for p in procs:  # Preempted: both processes die at once, right after that checkpoint.
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
  assert first.exists(), "the run never wrote its first checkpoint"
  assert not (workdir / "summary.json").exists(), "killed too late: the run had finished"


SECRET_SCRIPT = """
import sys
from trustml.core import distributed, rng
assert distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import jax
assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
entropy = rng.SecretStreams.fresh().entropy
with open(sys.argv[3], "w") as f:  # Not stdout: Gloo writes its own lines there, unsynchronised.
  f.write(str(entropy))
"""


@pytest.mark.subprocess
def test_fresh_dp_secret_is_process_0s_on_every_process(tmp_path):
  port = _free_port()
  outs = [tmp_path / f"entropy{pid}" for pid in range(2)]
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", SECRET_SCRIPT, f"127.0.0.1:{port}", str(pid), str(outs[pid])],
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for pid in range(2)
  ]
  values = []
  for p, path, (_, err) in zip(procs, outs, _communicate_all(procs, 300), strict=True):
    assert p.returncode == 0, err[-3000:]
    values.append(int(path.read_text()))
  assert values[0] == values[1] and values[0] > 0, values


SHADOW_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[3])
from trustml.core import distributed
assert distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import jax, numpy as np, optax
import attacks_tiny_model
from test_shadow import _pool
from trustml.attacks import lira, shadow

model = attacks_tiny_model.tiny_model()
pool, masks = _pool(), lira.shadow_masks(8, 64, seed=0)
kw = dict(num_steps=9, batch_size=8, seed=5)
p0, l0 = shadow.train_shadow_models(model, optax.adam(1e-2), pool, masks, **kw)  # 1 device
mesh = shadow.make_mesh()  # 4 devices, 2 per process: each process trains 4 of the 8 models.
assert mesh.is_multi_process and mesh.size == 4
p1, l1 = shadow.train_shadow_models(model, optax.adam(1e-2), pool, masks, mesh=mesh, **kw)
assert isinstance(l1, np.ndarray) and l1.shape == (8, 9), type(l1)
np.testing.assert_allclose(l1, np.asarray(l0), rtol=1e-5, atol=1e-6)
for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1), strict=True):
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
print("OK")
"""


def _two_scripts(script: str, *args: str) -> None:
  port = _free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", script, f"127.0.0.1:{port}", str(pid), *args],
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for pid in range(2)
  ]
  for p, (out, err) in zip(procs, _communicate_all(procs, 300), strict=True):
    assert p.returncode == 0 and "OK" in out, out[-2000:] + err[-3000:]


@pytest.mark.slow
@pytest.mark.subprocess
def test_shadow_models_over_two_processes_equal_one_device():
  _two_scripts(SHADOW_SCRIPT, str(ROOT / "tests" / "attacks"))


def test_resolve_args_validates_before_any_jax_call(monkeypatch):
  monkeypatch.setenv(distributed.ENV_ADDRESS, "10.0.0.1:4321")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
  assert distributed.resolve_args() == ("10.0.0.1:4321", 2, 1)
  assert distributed.resolve_args("h:1", 4, 3) == ("h:1", 4, 3)  # Flags win.
  with pytest.raises(ConfigError, match="process_id=2 is invalid"):
    distributed.resolve_args(None, 2, 2)
  with pytest.raises(ConfigError, match="coordinator_address='nohost' is invalid"):
    distributed.resolve_args("nohost")
  monkeypatch.delenv(distributed.ENV_ADDRESS)
  with pytest.raises(ConfigError, match="coordinator_address=None is invalid"):
    distributed.initialize()
  monkeypatch.delenv(distributed.ENV_NUM_PROCESSES)
  monkeypatch.delenv(distributed.ENV_PROCESS_ID)
  assert distributed.initialize() is False  # Nothing asked for: one process.


@pytest.mark.slow
@pytest.mark.subprocess
def test_dp_sgd_two_processes_equal_one_process_and_resume_exactly(tmp_path):
  one = _run("launch.train", DP_CONFIG, tmp_path / "one", 1, 4, DP_FLAGS)[0]
  two = _run("launch.train", DP_CONFIG, tmp_path / "two", 2, 2, DP_FLAGS)
  _check_same_run(tmp_path / "one", tmp_path / "two", one, two)
  part = tmp_path / "part"
  _kill_after_first_checkpoint(_start("launch.train", DP_CONFIG, part, 2, 2, DP_FLAGS), part, 2)
  resumed = _run("launch.train", DP_CONFIG, part, 2, 2, DP_FLAGS)
  _same(_summary(part), _summary(tmp_path / "two"))
  _same(resumed[1], resumed[0])
  assert resumed[0]["privacy/epsilon"] == two[0]["privacy/epsilon"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_federated_two_processes_equal_one_process(tmp_path):
  one = _run("launch.federated", FED_CONFIG, tmp_path / "one", processes=1, devices=4)[0]
  two = _run("launch.federated", FED_CONFIG, tmp_path / "two", processes=2, devices=2)
  assert one["fed/num_devices"] == two[0]["fed/num_devices"] == 4
  _check_same_run(tmp_path / "one", tmp_path / "two", one, two)
