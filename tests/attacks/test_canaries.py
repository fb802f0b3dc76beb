"""Canary generation/insertion (trustml.data.canaries) and the attack configs' validation."""

import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from trustml.attacks import experiment
from trustml.core.validation import ConfigError
from trustml.data import canaries, dataset, tokenizers

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from configs import attack as attack_config  # noqa: E402
from configs import privacy_study  # noqa: E402

CFG = dict(num_secret=3, secret_length=4, repeats=5, label=-1, num_audit=20, audit_length=4, seed=3)


def _ds():
  texts = np.array([f"play song {i % 10} by artist {i % 7}" for i in range(50)], object)
  train = {
    "text": texts,
    "label": np.arange(50, dtype=np.int32) % 3,
    "user_id": np.full(50, -1, np.int32),
    "slots": np.array([()] * 50 + [None], object)[:50],
  }
  return dataset.TextDataset("toy", {"train": train, "test": dict(train)}, ("a", "b", "c"))


def test_canaries_deterministic_and_inserted():
  ds = _ds()
  c1 = canaries.make(CFG, ds.train, 3)
  c2 = canaries.make(CFG, ds.train, 3)
  assert c1.secrets == c2.secrets and c1.audits == c2.audits
  np.testing.assert_array_equal(c1.audit_included, c2.audit_included)
  assert c1.secrets[0].text.startswith("my pin code is ")
  assert all(len(c.secret) == 4 and set(c.secret) <= set(canaries.DIGIT_WORDS) for c in c1.secrets)
  assert len({c.prefix for c in c1.secrets}) == 3
  assert len({c.label for c in c1.secrets}) == 3  # distinct labels while classes suffice
  new = canaries.insert(ds, c1, seed=0)
  ids = new.train["canary_id"]
  n_audit = int(c1.audit_included.sum())
  assert len(ids) == 50 + 3 * 5 + n_audit
  for i, c in enumerate(c1.secrets):
    rows = np.nonzero(ids == i)[0]
    assert len(rows) == 5 and all(new.train["text"][r] == c.text for r in rows)
    assert all(new.train["label"][r] == c.label for r in rows)
  assert sorted(ids[ids >= 3] - 3) == sorted(np.nonzero(c1.audit_included)[0])
  assert new.split("test") is ds.split("test")
  assert canaries.make(dict(CFG, seed=4), ds.train, 3).secrets != c1.secrets


def test_repeats_zero_is_a_control_that_inserts_no_secret():
  ds = _ds()
  control = canaries.make(dict(CFG, repeats=0), ds.train, 3)
  inserted = canaries.make(CFG, ds.train, 3)
  # Same secrets and audit coins as the inserted run (only the copies differ).
  assert [(c.text, c.label) for c in control.secrets] == [
    (c.text, c.label) for c in inserted.secrets
  ]
  new = canaries.insert(ds, control, seed=0)
  ids = new.train["canary_id"]
  assert not np.any((ids >= 0) & (ids < 3))
  assert int((ids >= 3).sum()) == int(control.audit_included.sum())
  with pytest.raises(ConfigError, match="repeats"):
    canaries.validate_canaries(dict(CFG, repeats=-1))


def test_more_secrets_than_classes_still_draws_labels():
  ds = _ds()
  cset = canaries.make(dict(CFG, num_secret=5), ds.train, 3)
  assert len(cset.secrets) == 5 and {c.label for c in cset.secrets} <= {0, 1, 2}
  fixed = canaries.make(dict(CFG, label=1), ds.train, 3)
  assert {c.label for c in fixed.secrets} == {1}


def test_out_of_vocabulary_canary_is_rejected():
  ds = _ds()
  cset = canaries.make(CFG, ds.train, 3)
  tok = tokenizers.WordTokenizer.build(list(ds.train["text"]), vocab_size=100)
  with pytest.raises(ConfigError, match="out-of-vocabulary"):
    canaries.check_in_vocab(cset.secrets, tok)  # "pin" never occurs in the toy corpus
  with pytest.raises(ConfigError, match="num_secret"):
    canaries.validate_canaries(dict(CFG, num_secret=99))


def _config(**attack_overrides):
  cfg = attack_config.get_config("smoke")
  for k, v in attack_overrides.items():
    cfg.attack[k] = v
  return cfg


@pytest.mark.parametrize(
  "override,field",
  [
    ({"fprs": (0.0, 0.01)}, "fprs"),
    ({"fprs": (1.5,)}, "fprs"),
    ({"num_shadow_models": 1}, "num_shadow_models"),
    ({"lira_variant": "x"}, "lira_variant"),
  ],
)
def test_attack_config_bad_input(override, field):
  with pytest.raises(ConfigError, match=field):
    experiment.validate_config(_config(**override))


def test_configs_and_sweep():
  experiment.validate_config(_config())
  dp = attack_config.get_config("smoke,eps=1")
  assert dp.privacy.mechanism != "none" and dp.privacy.target_epsilon == 1.0
  experiment.validate_config(dp)
  sweep = privacy_study.get_sweep(None)
  names = [s["name"] for s in sweep]
  assert names[:6] == ["eps_inf", "eps_8", "eps_4", "eps_2", "eps_1", "eps_0.5"]
  assert {"defense_dropout0.3", "defense_early_stop1ep"} <= set(names)
  assert privacy_study.get_config(None).data.name == "snips"
  assert privacy_study.get_config(None).model.name == "cnn"
  study_tr = privacy_study.get_config("model=transformer")
  assert study_tr.model.to_dict() == attack_config.get_config("data=snips").model.to_dict()
  assert dict(study_tr.model).items() >= attack_config.ORDERED_TRANSFORMER.items()
  assert study_tr.model.dropout_rate == 0.0 and study_tr.train.num_epochs == 10.0
  assert privacy_study.get_config("model=transformer,dropout=0.3").model.dropout_rate == 0.3
  nlu_tr = attack_config.get_config("data=snips,ordered=False").model
  assert (nlu_tr.pooling, nlu_tr.conv_kernel, nlu_tr.dropout_rate) == ("mean", 0, 0.1)
  assert isinstance(privacy_study.get_config("smoke"), ml_collections.ConfigDict)


def test_launch_rejects_bad_config_before_compute(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.attack",
      "--config=configs/attack.py:smoke,shadows=1",
      f"--workdir={tmp_path / 'w'}",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: attack.num_shadow_models=1")
  assert not (tmp_path / "w" / "checkpoints").exists()
