"""RNG streams, config argument parsing, validation errors, public API."""

import jax
import numpy as np
import pytest

import trustml.core as core
from trustml.core import config_args, rng, validation


def test_streams_are_deterministic_and_distinct():
  s = rng.RngStreams(3)
  a = jax.random.normal(s.at("dp_noise", 5), (4,))
  b = jax.random.normal(rng.RngStreams(3).at("dp_noise", 5), (4,))
  np.testing.assert_array_equal(a, b)
  c = jax.random.normal(s.at("dp_noise", 6), (4,))
  d = jax.random.normal(s.at("dropout", 5), (4,))
  assert not np.allclose(a, c) and not np.allclose(a, d)
  assert s.numpy("data", 1).integers(1 << 30) == rng.numpy_rng(3, "data", 1).integers(1 << 30)


def test_parse_arg_types_and_errors():
  a = config_args.parse_arg(
    "data=snips,smoke,eps=inf,steps=5", data="x", smoke=False, eps=1.0, steps=1
  )
  assert a.data == "snips" and a.smoke is True and a.eps == float("inf") and a.steps == 5
  with pytest.raises(validation.ConfigError, match="not a known field"):
    config_args.parse_arg("foo=1", data="x")
  with pytest.raises(validation.ConfigError, match="integer"):
    config_args.parse_arg("steps=a", steps=1)


def test_smoke_requested_reads_the_value_not_the_key():
  assert config_args.smoke_requested("data=snips,smoke")
  assert config_args.smoke_requested("smoke=true,eps=1")
  assert not config_args.smoke_requested("smoke=false")  # The key is there, smoke is off.
  assert not config_args.smoke_requested(None) and not config_args.smoke_requested("eps=1")
  with pytest.raises(validation.ConfigError, match="smoke='maybe' is invalid"):
    config_args.smoke_requested("smoke=maybe")
  from trustml.configs import privacy_study  # Its smoke default is the embedded corpus.

  assert privacy_study.get_config("smoke=false").data.name == "snips"
  assert privacy_study.get_config("smoke").data.name == "synthetic"


@pytest.mark.parametrize(
  "fn,args,match",
  [
    (validation.positive_int, ("a.b", 0), r"a\.b=0 is invalid: must be a positive integer"),
    (validation.in_range, ("privacy.delta", 1.5, 0.0, 1.0), r"must be in \(0.0, 1.0\)"),
    (validation.one_of, ("x.y", "z", ("a", "b")), "must be one of 'a', 'b'"),
    (validation.positive, ("lr", float("nan")), "NaN"),
  ],
)
def test_validation_messages_name_field_and_range(fn, args, match):
  with pytest.raises(ValueError, match=match):
    fn(*args)


def test_public_api():
  assert set(core.__all__) == {
    "Batch",
    "ConfigError",
    "PRNGKey",
    "Params",
    "RngStreams",
    "config_args",
    "devices",
    "entry",
    "logs",
    "plots",
    "rng",
    "types",
    "validation",
  }
  assert issubclass(core.ConfigError, ValueError)


def test_make_mesh_1d_names_its_axis_and_rejects_bad_device_counts():
  from trustml.core import devices

  mesh = devices.make_mesh_1d("models", 1, jax.sharding.AxisType.Explicit)
  assert mesh.axis_names == ("models",) and mesh.devices.shape == (1,)
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  assert devices.make_mesh_1d("clients").devices.size == jax.device_count()
  for bad in (0, -1, jax.device_count() + 1):
    with pytest.raises(validation.ConfigError, match="num_devices"):
      devices.make_mesh_1d("clients", bad)
