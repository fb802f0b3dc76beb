"""conv_layout: the re-laid-out convolutions compute what the originals compute (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tests.conftest import conv_dim_labels
from trustml.core import conv_layout

CASES = [  # (lhs shape, rhs shape, dimension numbers, strides, padding, dilations, groups)
  ((3, 9, 4), (3, 4, 5), ("NWC", "WIO", "NWC"), (1,), "SAME", (1,), 1),
  ((3, 4, 9), (5, 4, 3), ("NCW", "OIW", "NCW"), (2,), "VALID", (2,), 1),
  ((2, 7, 6, 4), (3, 2, 4, 6), ("NHWC", "HWIO", "NHWC"), (1, 2), ((1, 1), (0, 2)), (1, 1), 1),
  ((2, 4, 7, 6), (6, 2, 3, 2), ("NCHW", "OIHW", "NCHW"), (1, 1), "SAME", (1, 1), 2),
]


def _conv(case):
  _, _, dn, strides, padding, dil, groups = case

  def f(x, w):
    y = lax.conv_general_dilated(
      x, w, strides, padding, rhs_dilation=dil, dimension_numbers=dn, feature_group_count=groups
    )
    return jnp.sum(jnp.tanh(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))

  return f


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[2][0])
def test_values_and_gradients_equal_the_original_inside_a_scan(case):
  with jax.enable_x64(True):
    gen = np.random.default_rng(0)
    x = jnp.asarray(gen.normal(size=(4,) + case[0]))
    w = jnp.asarray(gen.normal(size=case[1]))
    vg = jax.value_and_grad(_conv(case), argnums=(0, 1))

    def body(carry, xi):
      v, (gx, gw) = vg(xi, w)
      return carry + gw, (v, gx)

    ref = jax.jit(lambda x: lax.scan(body, jnp.zeros_like(w), x))(x)
    got = jax.jit(
      lambda x: lax.scan(conv_layout.canonical_convolutions(body), jnp.zeros_like(w), x)
    )(x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_every_convolution_of_a_rolled_backward_is_canonical_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU layout check")
  case = CASES[0]
  x = jnp.ones((4,) + case[0], jnp.float32)
  w = jnp.ones(case[1], jnp.float32)
  g = jax.grad(_conv(case), argnums=(0, 1))

  def body(carry, xi):
    gx, gw = g(xi, w)
    return carry + gw + gx.sum(), None

  def labels(fn):
    hlo = jax.jit(lambda x: lax.scan(fn, jnp.zeros_like(w), x)[0]).lower(x).compile().as_text()
    return conv_dim_labels(hlo)

  assert any(lab != "b0f_0io->b0f" for lab in labels(body))  # XLA leaves the loop's as is.
  fixed = labels(conv_layout.loop_body(body))
  assert fixed and all(lab == "b0f_0io->b0f" for lab in fixed), fixed


def test_functions_without_convolutions_are_traced_unchanged():
  def f(a, b):
    return {"s": a @ b, "t": jnp.sin(a)}

  a, b = jnp.ones((2, 3)), jnp.ones((3, 2))
  got = conv_layout.canonical_convolutions(f)(a, b)
  np.testing.assert_array_equal(got["s"], f(a, b)["s"])
  assert conv_layout.is_canonical(lax.ConvDimensionNumbers((0, 2, 1), (2, 1, 0), (0, 2, 1)), 3)
  assert not conv_layout.is_canonical(lax.ConvDimensionNumbers((0, 1, 2), (0, 1, 2), (0, 1, 2)), 3)
