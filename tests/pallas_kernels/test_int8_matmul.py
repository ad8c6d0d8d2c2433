"""Block-scaled INT8 GEMM kernel against its twin, the "xla" GEMM and float64.

Exact cases: codes in [-5, 5] and scales 2^e with e in [-2, 2]. Every block
sum is an integer below 2^15 and every scaled term a multiple of 2^-4 below
2^17, so every f32 operation is exact and all implementations must equal the
float64 product bit for bit.

General cases (codes over [-127, 127], log-normal scales): the kernel adds
the same f32 terms ``(float(P_j) * sa) * sb`` in the same order as the
``"xla"`` implementation and the twin, on the same compiler, so the three
agree bit for bit. Against float64: P_j is exact (|P_j| < 2^21), each term
carries two roundings (2u relative) and the sum over nK blocks adds at most
(nK - 1) u sum_j |t_j|, so |out - exact| <= (nK + 2) u sum_j |t_j| with
u = 2^-24.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Int8Block, QTensor, quantize
from lowprec_jax.ops._xla_gemm import XLA
from pallas_kernels import int8_matmul as I
from tests.helpers import F32_EPS, rng

SHAPES = {  # (B, M, N, K)
  "aligned": (1, 64, 64, 128),
  "ragged": (2, 70, 45, 100),
  "ragged_k": (1, 33, 130, 257),
}


def _cdiv(a, b):
  return -(-a // b)


def _operands(bmnk, block, *, exact: bool, seed: int):
  b, m, n, k = bmnk
  g = rng("int8_matmul", bmnk, block, exact, seed)
  limit = 5 if exact else 127

  def codes(rows):
    return jnp.asarray(g.integers(-limit, limit + 1, (b, rows, k)), jnp.int8)

  def scales(rows):
    shape = (b, _cdiv(rows, block), _cdiv(k, block))
    if exact:
      return jnp.asarray(2.0 ** g.integers(-2, 3, shape), jnp.float32)
    return jnp.asarray(g.lognormal(-4, 1, shape), jnp.float32)

  return codes(m), scales(m), codes(n), scales(n)


def _terms(a_q, a_s, b_q, b_s, block):
  """float64 (exact product, sum_j |t_j|) of the block-scaled GEMM."""
  k = a_q.shape[2]
  out = abs_sum = 0.0
  for j in range(_cdiv(k, block)):
    cols = slice(j * block, (j + 1) * block)
    qa = np.asarray(a_q[:, :, cols], np.float64)
    qb = np.asarray(b_q[:, :, cols], np.float64)
    sa = np.repeat(np.asarray(a_s[:, :, j], np.float64), block, 1)
    sb = np.repeat(np.asarray(b_s[:, :, j], np.float64), block, 1)
    t = np.einsum("bmk,bnk->bmn", qa, qb)
    t = t * sa[:, : qa.shape[1], None] * sb[:, None, : qb.shape[1]]
    out, abs_sum = out + t, abs_sum + np.abs(t)
  return out, abs_sum


def _xla(a_q, a_s, b_q, b_s, block, out_dtype=jnp.float32):
  fmt = Int8Block(block)
  gemm = jax.jit(XLA.matmul, static_argnums=2)
  return gemm(QTensor(a_q, a_s, fmt), QTensor(b_q, b_s, fmt), out_dtype)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("block", [32, 128])
def test_matches_xla_and_float64(shape, block):
  bmnk = SHAPES[shape]
  for exact in (True, False):
    ops = _operands(bmnk, block, exact=exact, seed=0)
    got = I.int8_block_matmul(*ops, block=block, interpret=True)
    want, abs_sum = _terms(*ops, block)
    assert got.shape == bmnk[:3] and got.dtype == jnp.float32
    np.testing.assert_array_equal(got, _xla(*ops, block))
    np.testing.assert_array_equal(
      got, I.int8_block_matmul_reference(*ops, block=block)
    )
    if exact:
      np.testing.assert_array_equal(got, want.astype(np.float32))
    else:
      n_blocks = _cdiv(bmnk[3], block)
      bound = (n_blocks + 2) * F32_EPS * abs_sum
      assert np.all(np.abs(np.asarray(got, np.float64) - want) <= bound)


@functools.partial(jax.jit, static_argnames=("block", "rounding"))
def _library_quantize(x, seed, *, block, rounding):
  qt = quantize(x, Int8Block(block), rounding=rounding, seed=seed)
  return qt.qvalue, qt.scale


@pytest.mark.parametrize("block", [32, 128])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_requantized_output_matches_formats(block, rounding):
  """The INT8 epilogue equals quantizing the f32 product with the library."""
  ops = _operands(SHAPES["ragged"], block, exact=False, seed=1)
  f32 = _xla(*ops, block)
  for seed in (0, 77) if rounding == "stochastic" else (None,):
    kw = dict(block=block, out_block=32, out_rounding=rounding, seed=seed)
    q, s = I.int8_block_matmul(*ops, interpret=True, **kw)
    lib_seed = jnp.uint32(seed or 0)
    want = _library_quantize(f32, lib_seed, block=32, rounding=rounding)
    twin = I.int8_block_matmul_reference(*ops, **kw)
    for got, w, t in zip((q, s), want, twin):
      np.testing.assert_array_equal(got, w)
      np.testing.assert_array_equal(got, t)
    assert q.dtype == jnp.int8 and s.shape == (2, 3, 2)


def test_jetfire_helpers_are_the_three_variants():
  ops = _operands(SHAPES["ragged"], 32, exact=False, seed=2)
  fwd = I.jetfire_forward(*ops, block=32, interpret=True)
  dgrad = I.jetfire_dgrad(*ops, block=32, seed=5, interpret=True)
  wgrad = I.jetfire_wgrad(*ops, block=32, interpret=True)
  f32 = _xla(*ops, 32)
  want_fwd = _library_quantize(f32, jnp.uint32(0), block=32, rounding="nearest")
  want_dgrad = _library_quantize(
    f32, jnp.uint32(5), block=32, rounding="stochastic"
  )
  for got, want in zip((*fwd, *dgrad), (*want_fwd, *want_dgrad)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(wgrad, f32)


def test_other_out_blocks_and_dtypes():
  ops = _operands(SHAPES["ragged_k"], 128, exact=False, seed=3)
  f32 = _xla(*ops, 128)
  q, s = I.int8_block_matmul(*ops, block=128, out_block=128, interpret=True)
  want = _library_quantize(f32, jnp.uint32(0), block=128, rounding="nearest")
  np.testing.assert_array_equal(q, want[0])
  np.testing.assert_array_equal(s, want[1])
  out = I.int8_block_matmul(
    *ops, block=128, out_dtype=jnp.bfloat16, interpret=True
  )
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, f32.astype(jnp.bfloat16))


def test_nan_scale_poisons_its_rows_and_output_blocks():
  a_q, a_s, b_q, b_s = _operands(SHAPES["ragged"], 32, exact=True, seed=4)
  a_s = a_s.at[1, 1, 0].set(jnp.nan)  # rows 32..63 of batch 1
  out = np.asarray(
    I.int8_block_matmul(a_q, a_s, b_q, b_s, block=32, interpret=True)
  )
  assert np.isnan(out[1, 32:64]).all() and not np.isnan(out[1, :32]).any()
  assert not np.isnan(out[0]).any()
  q, s = I.int8_block_matmul(
    a_q, a_s, b_q, b_s, block=32, out_block=32, interpret=True
  )
  assert (
    np.isnan(np.asarray(s)[1, 1]).all() and not np.asarray(q)[1, 32:64].any()
  )
  assert np.isfinite(np.asarray(s)[0]).all()


def test_bad_arguments_raise_with_names():
  a_q, a_s, b_q, b_s = _operands(SHAPES["aligned"], 32, exact=True, seed=5)
  call = functools.partial(I.int8_block_matmul, interpret=True)
  with pytest.raises(
    ValueError,
    match=r"a_q has shape \(1, 64, 128\) and b_q has shape \(1, 64, 64\)",
  ):
    call(a_q, a_s, b_q[:, :, :64], b_s, block=32)
  with pytest.raises(
    ValueError,
    match=r"b_s has shape \(1, 2, 3\).*expected float32 of shape \(1, 2, 4\)",
  ):
    call(a_q, a_s, b_q, b_s[:, :, :3], block=32)
  with pytest.raises(ValueError, match="block must be one of"):
    call(a_q, a_s, b_q, b_s, block=16)
  with pytest.raises(
    ValueError, match=r"a_q has shape \(1, 64, 128\) and dtype float32"
  ):
    call(a_q.astype(jnp.float32), a_s, b_q, b_s, block=32)
  with pytest.raises(ValueError, match="needs seed="):
    call(a_q, a_s, b_q, b_s, block=32, out_block=32, out_rounding="stochastic")
