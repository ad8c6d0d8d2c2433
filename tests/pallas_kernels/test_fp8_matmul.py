"""Scaled FP8 GEMM kernel against its twin, the "xla" GEMM and float64.

Exact cases: codes in [-5, 5] (exact in E4M3 and E5M2) and scales 2^e with
e in [-2, 2]; with K = 300 every partial sum is a multiple of 2^-4 below
2^15, so every f32 operation is exact and all implementations must equal the
float64 product bit for bit.

General cases (every finite FP8 code, log-normal scales): products of two
FP8 values are exact in f32, so the implementations differ only in the
order of the f32 sums. Each sums K exact products (at most (K - 1) u
sum|terms| of rounding) and applies two scale multiplications (2u), so each
is within (K + 2) u sum_k |a_k b_k sa sb| of the float64 product (u = 2^-24).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Fp8, QTensor
from lowprec_jax.ops._xla_gemm import XLA
from pallas_kernels import fp8_matmul as F
from tests.helpers import F32_EPS, all_dots, rng

BMNK = (2, 70, 45, 300)  # ragged in M, N and K
E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2
NAMES = {np.dtype(E4M3): "e4m3", np.dtype(E5M2): "e5m2"}
CASES = [  # (a_tile, b_tile, a dtype)
  (None, None, E4M3),
  (None, None, E5M2),
  ((1, None), (1, None), E4M3),
  ((1, None), (1, None), E5M2),
  ((1, 128), (128, 128), E4M3),
  ((1, 128), (128, 128), E5M2),
  ((1, 128), (1, 128), E4M3),
  ((1, 128), (1, 128), E5M2),
  ((1, 32), (32, 32), E4M3),
  ((1, 64), (1, 64), E5M2),
]


def _scale_shape(shape, tile):
  b, r, k = shape
  if tile is None:
    return (1, 1, 1)
  if tile == (1, None):
    return (b, r, 1)
  return (b, -(-r // tile[0]), -(-k // tile[1]))


def _operands(a_tile, b_tile, a_dtype, *, exact: bool):
  b, m, n, k = BMNK
  g = rng("fp8_matmul", a_tile, b_tile, str(a_dtype), exact)

  def codes(rows, dtype):
    if exact:
      values = g.integers(-5, 6, (b, rows, k)).astype(np.float32)
      return jnp.asarray(values).astype(dtype)
    finite = np.arange(256, dtype=np.uint8).view(dtype)
    finite = finite[np.isfinite(finite.astype(np.float32))]
    return jnp.asarray(g.choice(finite, (b, rows, k)))

  def scales(rows, tile):
    shape = _scale_shape((b, rows, k), tile)
    if exact:
      return jnp.asarray(2.0 ** g.integers(-2, 3, shape), jnp.float32)
    return jnp.asarray(g.lognormal(-3, 1, shape), jnp.float32)

  return codes(m, a_dtype), scales(m, a_tile), codes(n, E4M3), scales(n, b_tile)


def _expand(s, tile, rows, k):
  s = np.asarray(s, np.float64)
  if tile is None or tile == (1, None):
    return np.broadcast_to(s, (BMNK[0], rows, k) if tile else (1, 1, 1))
  s = np.repeat(np.repeat(s, tile[0], 1), tile[1], 2)
  return s[:, :rows, :k]


def _float64(a_q, a_s, b_q, b_s, a_tile, b_tile):
  """(exact product, sum_k |terms|) in float64."""
  _, m, n, k = BMNK
  a = np.asarray(a_q.astype(jnp.float32), np.float64)
  b = np.asarray(b_q.astype(jnp.float32), np.float64)
  a_scaled = a * _expand(a_s, a_tile, m, k)
  b_scaled = b * _expand(b_s, b_tile, n, k)
  exact = np.einsum("bmk,bnk->bmn", a_scaled, b_scaled)
  return exact, np.einsum("bmk,bnk->bmn", np.abs(a_scaled), np.abs(b_scaled))


def _xla(a_q, a_s, b_q, b_s, a_tile, b_tile):
  a = QTensor(a_q, a_s, Fp8(NAMES[np.dtype(a_q.dtype)], a_tile))
  b = QTensor(b_q, b_s, Fp8("e4m3", b_tile))
  return jax.jit(XLA.matmul, static_argnums=2)(a, b, jnp.float32)


@pytest.mark.parametrize("a_tile, b_tile, a_dtype", CASES)
def test_matches_xla_and_float64(a_tile, b_tile, a_dtype):
  tiles = dict(a_tile=a_tile, b_tile=b_tile)
  for exact in (True, False):
    ops = _operands(a_tile, b_tile, a_dtype, exact=exact)
    got = F.fp8_matmul(*ops, interpret=True, **tiles)
    want, abs_sum = _float64(*ops, a_tile, b_tile)
    xla = _xla(*ops, a_tile, b_tile)
    assert got.shape == BMNK[:3] and got.dtype == jnp.float32
    if exact:
      np.testing.assert_array_equal(got, want.astype(np.float32))
      np.testing.assert_array_equal(got, xla)
      np.testing.assert_array_equal(got, F.fp8_matmul_reference(*ops, **tiles))
    else:
      bound = (BMNK[3] + 2) * F32_EPS * abs_sum
      for out in (got, xla):
        assert np.all(np.abs(np.asarray(out, np.float64) - want) <= bound)


def test_bf16_output_and_twin():
  ops = _operands((1, 128), (128, 128), E4M3, exact=True)
  kw = dict(a_tile=(1, 128), b_tile=(128, 128), out_dtype=jnp.bfloat16)
  got = F.fp8_matmul(*ops, interpret=True, **kw)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(got, F.fp8_matmul_reference(*ops, **kw))


@pytest.mark.parametrize(
  "a_dtype, dot_dtype", [(E4M3, E4M3), (E5M2, jnp.bfloat16)]
)
def test_mixed_fp8_dot_runs_in_bf16(a_dtype, dot_dtype):
  """Triton rejects an E5M2 x E4M3 dot; the kernel widens both to bf16."""
  ops = _operands(None, None, a_dtype, exact=True)
  jaxpr = jax.make_jaxpr(
    lambda *ops: F.fp8_matmul(*ops, a_tile=None, b_tile=None, interpret=True)
  )(*ops)
  dots = {
    (str(e.invars[0].aval.dtype), str(e.invars[1].aval.dtype))
    for e in all_dots(jaxpr.jaxpr)
  }
  name = np.dtype(dot_dtype).name
  assert dots == {(name, name)}


@pytest.mark.parametrize(
  "a_tile, b_tile, a_dtype, b_dtype, match",
  [
    (
      (1, None),
      None,
      E4M3,
      E4M3,
      r"a_tile=\(1, None\) x b_tile=None have no FP8 kernel",
    ),
    ((1, 128), (64, 64), E4M3, E4M3, r"a_tile=\(1, 128\) x b_tile=\(64, 64\)"),
    ((1, 16), (1, 16), E4M3, E4M3, r"with G in \(32, 64, 128\)"),
    (None, None, E4M3, E5M2, "float8_e4m3fn x float8_e5m2 are not supported"),
  ],
)
def test_unsupported_requests_raise(a_tile, b_tile, a_dtype, b_dtype, match):
  b, m, n, k = BMNK
  a_q = jnp.zeros((b, m, k), a_dtype)
  b_q = jnp.zeros((b, n, k), b_dtype)
  a_s = jnp.ones(_scale_shape(a_q.shape, a_tile), jnp.float32)
  b_s = jnp.ones(_scale_shape(b_q.shape, b_tile), jnp.float32)
  with pytest.raises(NotImplementedError, match=match):
    F.fp8_matmul(a_q, a_s, b_q, b_s, a_tile=a_tile, b_tile=b_tile)


def test_bad_scales_raise_with_names():
  a_q, a_s, b_q, b_s = _operands((1, 128), (1, 128), E4M3, exact=True)
  with pytest.raises(
    ValueError,
    match=r"a_s has shape \(1, 1, 1\) and dtype float32; for tile \(1, 128\) "
    r"expected float32 of shape \(2, 70, 3\)",
  ):
    F.fp8_matmul(
      a_q, a_s[:1, :1, :1], b_q, b_s, a_tile=(1, 128), b_tile=(1, 128)
    )
