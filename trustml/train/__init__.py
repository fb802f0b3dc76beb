"""Training loop, evaluation, checkpoints and the run-contract writers."""

from trustml.core import entry as _entry
from trustml.train import checkpoint, config, evaluate, experiment, loop, writers
from trustml.train.checkpoint import Checkpointer
from trustml.train.evaluate import evaluate as evaluate_model
from trustml.train.experiment import Prepared, from_arrays, prepare
from trustml.train.loop import Outcome, TrainState, fit, load_params, train
from trustml.train.writers import MetricWriter, write_config, write_summary

run = _entry.one_call("trustml.train.experiment:run", pillar="train", launcher="launch/train.py")

__all__ = [
  "Checkpointer",
  "MetricWriter",
  "Outcome",
  "Prepared",
  "TrainState",
  "checkpoint",
  "config",
  "evaluate",
  "evaluate_model",
  "experiment",
  "fit",
  "from_arrays",
  "load_params",
  "loop",
  "prepare",
  "run",
  "train",
  "write_config",
  "write_summary",
  "writers",
]
