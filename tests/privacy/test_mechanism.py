"""Mechanism oracles: float64 per-example loop, clipping bound, padding, NaN (ghost: test_ghost.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from tests.conftest import conv_dim_labels
from trustml.core import rng as rng_lib
from trustml.models import registry
from trustml.privacy import clipping, mechanism, noise, per_example

B, T, V, C = 6, 8, 40, 3
SMALL = dict(
  bag=dict(embed_dim=8, hidden_dim=8),
  cnn=dict(embed_dim=8, num_filters=4, kernel_sizes=(2, 3)),
  transformer=dict(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16, dropout_rate=0.0),
  causal_lm=dict(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16),
)
# The privacy study's transformer classifier: causal stem + causal attention + max pooling.
SMALL["transformer_ordered"] = dict(
  SMALL["transformer"], conv_kernel=3, causal_attention=True, pooling="max"
)


def _batch(size=B, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 12, (size, T)).astype(np.int32)  # Small id range: repeated tokens.
  lengths = rng.integers(3, T + 1, size)
  mask = np.arange(T)[None] < lengths[:, None]
  return {
    "tokens": jnp.asarray(np.where(mask, tokens, 0)),
    "mask": jnp.asarray(mask),
    "label": jnp.asarray(rng.integers(0, C, size).astype(np.int32)),
    "weight": jnp.ones((size,), jnp.float32),
    "index": jnp.arange(size, dtype=jnp.int32),
  }


def _model(name, x64=False):
  cfg = registry.default_model_config(name.split("_ordered")[0])
  cfg.update(SMALL[name])
  model = registry.build_model(cfg, vocab_size=V, num_classes=C, max_len=T)
  params = model.init(jax.random.key(1), _batch())
  if x64:
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
  return model, params


def _close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


def test_per_example_grads_equal_python_loop_float64():
  with jax.enable_x64(True):
    model, params = _model("bag", x64=True)
    batch = _batch()
    grads, losses = jax.jit(per_example.per_example_grads, static_argnums=0)(
      model.per_example_loss, params, batch
    )
    single = jax.jit(jax.grad(lambda p, one: model.per_example_loss(p, one)[0]))
    for i in range(B):
      one = jax.tree.map(lambda x, i=i: x[i : i + 1], batch)
      ref = single(params, one)
      _close(jax.tree.map(lambda g, i=i: g[i], grads), ref, 1e-12)
      assert float(losses[i]) == pytest.approx(float(model.per_example_loss(params, one)[0]))


@pytest.mark.parametrize("how", ["flat", "per_layer"])
def test_clipped_contributions_have_norm_at_most_c(how):
  model, params = _model("bag")
  grads, _ = per_example.per_example_grads(model.per_example_loss, params, _batch())
  sq = clipping.leaf_sq_norms(grads)
  clip = 0.05
  factors, st = clipping.clip_factors(sq, clip, jnp.ones(B), how)
  assert float(st["num_clipped"]) > 0
  leaves = jax.tree.leaves(grads)
  for i in range(B):
    parts = [f[i] * g[i] for f, g in zip(jax.tree.leaves(factors), leaves, strict=True)]
    total = float(jnp.sqrt(sum(jnp.sum(p**2) for p in parts)))
    assert total <= clip * (1 + 1e-5)
    if how == "per_layer":
      for p in parts:
        assert float(jnp.linalg.norm(p.ravel())) <= clip / np.sqrt(len(leaves)) * (1 + 1e-5)


@pytest.mark.parametrize("mech", ["dp_sgd", "edp_sgd"])
def test_no_noise_and_huge_clip_is_the_mean_gradient(mech):
  model, params = _model("bag")
  batch = _batch()
  fn = mechanism.make_grad_fn(
    model, mechanism=mech, l2_clip_norm=1e9, noise_multiplier=0.0, normaliser=B, dropout=False
  )
  got, aux = jax.jit(fn)(params, batch, jax.random.key(0))
  ref = jax.grad(lambda p: model.per_example_loss(p, batch).mean())(params)
  _close(got, ref, 2e-5)
  assert float(aux["unsafe/num_clipped"]) == 0.0
  assert float(aux["loss"]) == pytest.approx(float(model.per_example_loss(params, batch).mean()))


def test_noise_has_the_stated_std_and_depends_on_the_key():
  tree = {"a": jnp.zeros((300, 300)), "b": jnp.zeros((10_000,))}
  std = 0.7
  out = noise.add_gaussian_noise(tree, std, jax.random.key(42))
  x = np.concatenate([np.ravel(v) for v in jax.tree.leaves(out)]).astype(np.float64)
  n = x.size
  # (n-1) s²/σ² ~ chi²(n-1); two-sided test at false-failure rate 1e-6 (fixed seed 42).
  stat = (n - 1) * x.var(ddof=1) / std**2
  lo, hi = stats.chi2.ppf([0.5e-6, 1 - 0.5e-6], n - 1)
  assert lo < stat < hi
  assert abs(x.mean()) < 5.3 * std / np.sqrt(n)  # |z| < 5.3: false-failure rate ~1e-7.
  again = noise.add_gaussian_noise(tree, std, jax.random.key(42))
  other = noise.add_gaussian_noise(tree, std, jax.random.key(43))
  _close(out, again, 0)
  assert not np.allclose(np.asarray(out["a"]), np.asarray(other["a"]))
  assert not np.allclose(np.asarray(out["a"][:100, 0]), np.asarray(out["b"][:100]))


@pytest.mark.parametrize("shapes", [[(1,)], [(3,)], [(300, 7), (5,), (1001,)], [(64, 129)]])
def test_noise_is_jax_random_normal_bit_for_bit(shapes):
  # The CPU form (unrolled threefry rounds, odd counts zero-padded as jax does) against JAX's
  # own generator: one flat non-partitionable draw of the total size, sliced per shape.
  key = jax.random.key(7)
  total = sum(int(np.prod(s)) for s in shapes)
  with jax.threefry_partitionable(False):
    ref = np.asarray(jax.random.normal(key, (total,), jnp.float32))
  got = jax.jit(lambda k: noise._standard_normals(k, shapes))(key)
  flat = np.concatenate([np.ravel(np.asarray(z)) for z in got])
  assert [z.shape for z in got] == [tuple(s) for s in shapes]
  np.testing.assert_array_equal(flat, ref)
  rbg = jax.random.key(7, impl="rbg")  # Another generator: jax.random.normal itself.
  np.testing.assert_array_equal(
    np.asarray(noise._standard_normals(rbg, [(5,)])[0]), np.asarray(jax.random.normal(rbg, (5,)))
  )


@pytest.mark.parametrize("mech", ["dp_sgd", "edp_sgd"])
def test_padding_changes_nothing(mech):
  model, params = _model("bag")
  real = _batch(4)
  padded = jax.tree.map(lambda a, b: jnp.concatenate([a, b[:3]]), real, _batch(3, seed=5))
  padded["weight"] = padded["weight"].at[4:].set(0.0)
  fn = jax.jit(mechanism.clipped_sum_fn(model.per_example_loss, mech), static_argnums=3)
  a, st_a = fn(params, real, 0.5, None)
  b, st_b = fn(params, padded, 0.5, None)
  _close(a, b, 1e-6)
  assert float(st_b["num_examples"]) == 4.0


@pytest.mark.parametrize("mech", ["dp_sgd", "edp_sgd"])
def test_nan_examples_are_dropped_and_counted(mech):
  model, params = _model("bag")
  batch = _batch()

  def poisoned(p, b, rng=None):
    losses = model.per_example_loss(p, b, rng)
    return losses * jnp.where(b["index"] == 1, jnp.nan, 1.0)

  fn = jax.jit(mechanism.clipped_sum_fn(poisoned, mech), static_argnums=3)
  got, st = fn(params, batch, 0.5, None)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(got))
  assert float(st["num_nonfinite"]) == 1.0
  without = dict(batch, weight=batch["weight"].at[1].set(0.0))
  ref_fn = jax.jit(mechanism.clipped_sum_fn(model.per_example_loss, mech), static_argnums=3)
  ref, _ = ref_fn(params, without, 0.5, None)
  _close(got, ref, 1e-6)


def test_virtual_batches_accumulate_under_one_noise_draw():
  model, params = _model("bag")
  batch = _batch()
  kw = dict(mechanism="edp_sgd", l2_clip_norm=0.2, normaliser=6.0, dropout=False)
  key = jax.random.key(3)
  whole = jax.jit(mechanism.make_grad_fn(model, noise_multiplier=0.0, **kw))
  micro = jax.jit(mechanism.make_grad_fn(model, noise_multiplier=0.0, physical_batch_size=2, **kw))
  _close(micro(params, batch, key)[0], whole(params, batch, key)[0], 1e-6)
  noisy1 = jax.jit(mechanism.make_grad_fn(model, noise_multiplier=1.0, **kw))(params, batch, key)
  noisy3 = jax.jit(
    mechanism.make_grad_fn(model, noise_multiplier=1.0, physical_batch_size=2, **kw)
  )(params, batch, key)
  _close(noisy3[0], noisy1[0], 1e-5)  # Same key, one draw: identical noise for any micro-batching.


@pytest.mark.parametrize("name", ["cnn", "bag"])
def test_micro_batch_loop_with_and_without_padding_skip_equals_the_whole_batch(name):
  # The rolled loop (convolutions re-laid out for XLA:CPU) and the skip of all-padding
  # micro-batches both give the whole-batch clipped sum; sigma = 0 so values compare exactly.
  model, params = _model(name)
  batch = _batch(8)
  batch = dict(batch, weight=batch["weight"].at[5:].set(0.0))  # Rows 5..7 are padding.
  key = jax.random.key(3)
  kd = rng_lib.SecretStreams.fresh().key_data("dp_noise")

  def run(physical, skip, shards=1):
    dp = mechanism.dp_sgd(
      model.per_example_loss,
      mechanism="edp_sgd",
      l2_clip_norm=0.2,
      noise_multiplier=0.0,
      normaliser=6.0,
      key_data=kd,
      physical_batch_size=physical,
      dropout=False,
      skip_padding=skip,
      num_data_shards=shards,
    )
    return jax.jit(lambda p, b: dp(p, b, key, dp.init(p))[0])(params, batch)

  whole = run(None, False)
  for physical, skip in ((2, False), (2, True), (1, True)):
    _close(run(physical, skip), whole, 1e-6)
  # Two shards of 4 rows, 1 row per micro-batch: the last live row of either shard sets the
  # trip count (shard 0 holds rows 0-3, shard 1 row 4 then padding).
  _close(run(1, True, shards=2), whole, 1e-6)


def test_padding_skip_runs_only_the_live_micro_batches():
  # The trip count is the number of micro-batches up to the last live row: counted through
  # the loss calls' effect on a stat that counts micro-batches run (num_examples counts real
  # rows, so use a loss whose padding rows would be counted if processed).
  model, params = _model("bag")
  batch = _batch(8)
  batch = dict(batch, weight=batch["weight"].at[3:].set(0.0))
  calls = []

  def counting_sum(params, b, clip, rng):
    jax.debug.callback(lambda: calls.append(1))
    return mechanism.clipped_sum_fn(model.per_example_loss, "edp_sgd")(params, b, clip, rng)

  for skip, expected in ((False, 4), (True, 2)):
    calls.clear()
    total, _ = jax.jit(
      lambda p, b, skip=skip: mechanism._accumulate(counting_sum, p, b, 0.2, None, 2, 1, skip)
    )(params, batch)
    jax.block_until_ready(total)
    assert len(calls) == expected


def test_cnn_micro_batch_loop_compiles_to_library_convolutions():
  # XLA:CPU's library layout for every convolution of the rolled eDP loop (core/conv_layout):
  # without the re-layout the input-gradient convolution appears as b0f_0oi->b0f.
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU layout check")
  model, params = _model("cnn")
  batch = _batch(8)
  fn = mechanism.make_grad_fn(
    model,
    mechanism="edp_sgd",
    l2_clip_norm=0.2,
    noise_multiplier=1.0,
    normaliser=8.0,
    physical_batch_size=2,
    dropout=False,
  )
  hlo = jax.jit(fn).lower(params, batch, jax.random.key(0)).compile().as_text()
  labels = conv_dim_labels(hlo)
  assert labels and all(lab == "b0f_0io->b0f" for lab in labels), labels


def test_optax_transformation_clips_noises_and_folds_the_step():
  model, params = _model("bag")
  batch = _batch()
  grads, _ = per_example.per_example_grads(model.per_example_loss, params, batch)
  ref, _ = clipping.clipped_sum(grads, 0.1, batch["weight"])
  key_data = rng_lib.SecretStreams.fresh().key_data("dp_noise")
  tx = mechanism.dp_aggregate(0.1, 0.0, 6.0, key_data)
  out, _ = tx.update(grads, tx.init(params))
  _close(out, jax.tree.map(lambda x: x / 6.0, ref), 1e-6)
  tx = optax.chain(mechanism.dp_aggregate(0.1, 1.0, 6.0, key_data), optax.sgd(1.0))
  state = tx.init(params)
  u1, state = tx.update(grads, state)
  u2, _ = tx.update(grads, state)
  assert not np.allclose(np.asarray(u1["head"]["bias"]), np.asarray(u2["head"]["bias"]))


def test_adaptive_count_query_reports_unclipped_fraction():
  model, params = _model("bag")
  batch = _batch()
  dp = mechanism.dp_sgd(
    model.per_example_loss,
    mechanism="edp_sgd",
    l2_clip_norm=0.05,
    noise_multiplier=0.0,
    normaliser=6.0,
    key_data=rng_lib.SecretStreams.fresh().key_data("dp_noise"),
    adaptive=mechanism.AdaptiveClipping(0.5, 0.2, 1e-6),
    dropout=False,
  )
  state = dp.init(params)
  _, aux, new_state = jax.jit(dp)(params, batch, jax.random.key(0), state)
  grads, _ = per_example.per_example_grads(model.per_example_loss, params, batch)
  norms = np.sqrt(sum(np.asarray(v) for v in jax.tree.leaves(clipping.leaf_sq_norms(grads))))
  frac = np.mean(norms <= 0.05)
  assert float(aux["dp/unclipped_fraction"]) == pytest.approx(frac, abs=1e-5)
  # The clip norm moves on device, in the state: C * exp(-0.2 (b - 0.5)).
  assert float(new_state.l2_clip_norm) == pytest.approx(
    0.05 * np.exp(-0.2 * (frac - 0.5)), rel=1e-5
  )
  assert float(aux["dp/count_sensitivity"]) == 0.5  # Centred count, add/remove-one.


def test_shard_local_micro_batches_sum_the_same_rows():
  # With a data mesh axis, micro-batch i takes `physical` rows from each shard's block: a
  # different grouping of the same rows, so the clipped sum is unchanged (no dropout).
  model, params = _model("bag")
  batch = _batch()
  kw = dict(mechanism="edp_sgd", l2_clip_norm=0.2, noise_multiplier=0.0, normaliser=6.0)
  key_data = rng_lib.SecretStreams.fresh().key_data("dp_noise")
  one = mechanism.dp_sgd(
    model.per_example_loss, key_data=key_data, physical_batch_size=3, dropout=False, **kw
  )
  two = mechanism.dp_sgd(
    model.per_example_loss,
    key_data=key_data,
    physical_batch_size=1,
    dropout=False,
    num_data_shards=3,
    **kw,
  )
  a = jax.jit(one)(params, batch, jax.random.key(0), one.init(params))[0]
  b = jax.jit(two)(params, batch, jax.random.key(0), two.init(params))[0]
  _close(a, b, 1e-6)
