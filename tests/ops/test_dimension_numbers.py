"""Canonical layout (B, M, K) x (B, N, K) -> (B, M, N) for any dot_general."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.ops._dimension_numbers import canonicalize
from tests.helpers import normal

# (lhs shape, rhs shape, dims, rhs stored batch + contracting + free)
CASES = [
  ((8, 16), (16, 4), (((1,), (0,)), ((), ())), True),
  ((8, 16), (4, 16), (((1,), (1,)), ((), ())), False),
  ((16, 8), (16, 4), (((0,), (0,)), ((), ())), True),
  ((2, 5, 16), (16, 3), (((2,), (0,)), ((), ())), True),
  ((3, 5, 16), (3, 16, 7), (((2,), (1,)), ((0,), (0,))), True),
  ((5, 3, 16), (16, 7, 3), (((2,), (0,)), ((1,), (2,))), False),
  ((4, 6, 20), (6, 20, 9), (((1, 2), (0, 1)), ((), ())), True),
  ((4, 6, 20), (20, 9, 6), (((1, 2), (2, 0)), ((), ())), False),
  ((2, 3, 4, 5), (3, 5, 2, 6), (((3,), (1,)), ((0, 1), (2, 0))), False),
]


@pytest.mark.parametrize("lshape, rshape, dims, kn", CASES)
def test_canonical_product_equals_lax_dot_general(lshape, rshape, dims, kn):
  lhs, rhs = normal(lshape), normal(rshape, seed=1)
  layout = canonicalize(lhs, rhs, dims)
  assert layout.rhs_kn == kn
  if kn:  # the stored (K, N) weight is handed over without moving data
    jaxpr = jax.make_jaxpr(layout.rhs)(rhs).jaxpr
    assert [e.primitive.name for e in jaxpr.eqns] in ([], ["reshape"])
  out3 = jnp.einsum(
    "bmk,bkn->bmn" if kn else "bmk,bnk->bmn",
    layout.lhs(lhs),
    layout.rhs(rhs),
    precision=jax.lax.Precision.HIGHEST,
  )
  want = jax.lax.dot_general(
    lhs, rhs, dims, precision=jax.lax.Precision.HIGHEST
  )
  assert layout.out_shape == want.shape
  np.testing.assert_allclose(layout.out(out3), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "lshape, rshape, dims, match",
  [
    (
      (4, 8),
      (8, 3),
      (((2,), (0,)), ((), ())),
      r"lhs has shape \(4, 8\) and "
      r"dtype float32; contracting \+ batch dims \(2,\) must be in \[0, 2\)",
    ),
    (
      (4, 8),
      (9, 3),
      (((1,), (0,)), ((), ())),
      r"lhs contracting dims \(1,\) "
      r"\(sizes \(8,\)\) must pair with rhs contracting dims \(0,\) \(sizes "
      r"\(9,\)\)",
    ),
    ((2, 4, 8), (3, 8, 5), (((2,), (1,)), ((0,), (0,))), "lhs batch dims"),
    ((4, 8), (8, 3), (((1, 1), (0, 0)), ((), ())), "repeat an axis"),
    ((4, 8), (8, 3), (((1,), (0, 1)), ((), ())), "must pair"),
    ((4, 8), (8, 3), ((1, 0), ((), ())), "must be a sequence of ints"),
    ((4, 8), (8, 3), "nonsense", "dimension_numbers must be"),
    ((4, 8), (8, 3), (((1.0,), (0,)), ((), ())), "must contain ints"),
  ],
)
def test_bad_dimension_numbers_raise(lshape, rshape, dims, match):
  with pytest.raises(ValueError, match=match):
    canonicalize(jnp.ones(lshape), jnp.ones(rshape), dims)
