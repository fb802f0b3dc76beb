"""trustml.core.logs (noise filter, progress, summary line) and config-arg explicitness."""

import logging
import math

import pytest
from absl import logging as absl_logging

from trustml.core import config_args, logs, validation
from trustml.train import config as train_config


def _record(path: str, level: int, message: str, name: str = "absl") -> logging.LogRecord:
  return logging.LogRecord(name, level, path, 1, message, None, None)


DP_NOISE = (
  "_compute_log_a_frac failed to converge after 1000 iterations with q=0.126984, "
  "sigma=1.033221, alpha=1.300000. Excluding this order from the epsilon computation."
)


@pytest.mark.parametrize(
  "path,level,message,kept",
  [
    ("/x/site-packages/dp_accounting/rdp/rdp_privacy_accountant.py", 30, DP_NOISE, False),
    ("/x/site-packages/dp_accounting/rdp/rdp_privacy_accountant.py", 30, "other warning", True),
    ("/x/site-packages/orbax/checkpoint/checkpoint_manager.py", 20, "Saving checkpoint", False),
    ("/x/site-packages/orbax/checkpoint/checkpoint_manager.py", 30, "disk almost full", True),
    ("/x/site-packages/jax/_src/xla_bridge.py", 20, "Unable to initialize backend 'tpu'", False),
    ("/work/main/trustml/train/loop.py", 20, "step 2/6 loss 2.4", True),
  ],
)
def test_third_party_filter(path, level, message, kept):
  assert logs.ThirdPartyFilter().filter(_record(path, level, message)) is kept


def test_quiet_third_party_is_idempotent_and_filters_absl_logger():
  logs.quiet_third_party()
  logs.quiet_third_party()
  absl_logger = logging.getLogger("absl")
  assert sum(isinstance(f, logs.ThirdPartyFilter) for f in absl_logger.filters) == 1


def test_show_progress_makes_info_visible_outside_app_run():
  before = absl_logging.get_verbosity()
  try:
    absl_logging.set_verbosity(absl_logging.WARNING)
    logs.show_progress()
    assert absl_logging.get_verbosity() == absl_logging.INFO
    assert logging.getLogger().handlers  # Somewhere for INFO records to go.
  finally:
    absl_logging.set_verbosity(before)


def test_summary_line_names_headline_figures():
  line = logs.summary_line(
    {
      "eval/accuracy": 0.9991,
      "privacy/epsilon": 2.9987,
      "privacy/delta": 1e-5,
      "train/steps": 166,
      "train/wall_seconds": 20.4,
    },
    "runs/x",
  )
  assert line == "done: accuracy 0.999, ε = 3.00 (δ = 1e-05), 166 steps in 20 s; files in runs/x"
  assert "∞" in logs.summary_line({"privacy/epsilon": "inf", "fed/rounds": 3})
  assert "3 rounds" in logs.summary_line({"privacy/epsilon": math.inf, "fed/rounds": 3})


def test_smoke_never_overrides_explicit_args():
  from configs import attack, fed_nlu

  assert fed_nlu.get_config("clients=1000,smoke,partition=iid").partition.num_clients == 1000
  assert fed_nlu.get_config("smoke,partition=iid").partition.num_clients == 12
  assert fed_nlu.get_config("smoke,rounds=5").federated.rounds == 5
  assert fed_nlu.get_config("smoke").federated.rounds == 3
  assert attack.get_config("smoke,repeats=10").canaries.repeats == 10
  assert config_args.given("data=snips, smoke") == {"data", "smoke"}


def test_zero_epochs_without_steps_is_rejected():
  with pytest.raises(validation.ConfigError, match=r"train.num_epochs=0.0 is invalid"):
    train_config.validate_train(train_config.default_train_config(num_epochs=0.0))
  train_config.validate_train(train_config.default_train_config(num_steps=5))  # Steps mode.
  train_config.validate_train(train_config.default_train_config(num_epochs=1.0))


def test_large_delta_warns():
  assert validation.warn_large_delta("privacy.delta", 0.1, 252, "training examples")
  assert not validation.warn_large_delta("privacy.delta", 1e-5, 252)
