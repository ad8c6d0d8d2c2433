"""The Hopper block-scaled INT8 GEMM against the ``"xla"`` implementation.

On CPU through the Mosaic GPU interpreter (small shapes), on a GPU compiled
(realistic shapes); see ``mosaic_support``.
"""

import functools

import jax
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Int8Block, quantize
from pallas_kernels import int8_matmul as portable
from pallas_kernels.mosaic.int8_matmul import int8_block_matmul
from tests.helpers import normal
from tests.pallas_kernels import mosaic_support as ms


def _run(a, b, **kw):
  # Block: an interpreted kernel's callbacks must finish before other XLA
  # work is dispatched (see mosaic_support.finished).
  return ms.finished(
    int8_block_matmul(
      a.qvalue, a.scale, b.qvalue, b.scale, block=a.format.block, **kw
    )
  )


@pytest.mark.parametrize(
  "block,shape",
  [(32, ms.ALIGNED), (128, ms.ALIGNED), (32, ms.RAGGED), (64, ms.RAGGED)],
)
def test_exact_with_small_integers(block, shape):
  # Codes in [-5, 5], scales in {1/2, 1, 2}: int32 partial sums are exact
  # and every fp32 product and running sum is a multiple of 1/4 below 2^22,
  # so any correct order of the same operations gives the same bits.
  bsz, m, n, k = shape
  a = ms.exact_operand(Int8Block(block), (bsz, m, k), "a", block)
  b = ms.exact_operand(Int8Block(block), (bsz, n, k), "b", block)
  ms.assert_bitwise(_run(a, b), ms.reference(a, b))


def test_bf16_output_is_the_rounded_f32_result():
  # The epilogue rounds the exact fp32 result once, as "xla" does.
  bsz, m, n, k = ms.ALIGNED
  a = ms.exact_operand(Int8Block(128), (bsz, m, k), "a16")
  b = ms.exact_operand(Int8Block(128), (bsz, n, k), "b16")
  got = _run(a, b, out_dtype=jnp.bfloat16)
  ms.assert_bitwise(got, ms.reference(a, b, jnp.bfloat16))


@pytest.mark.parametrize("block", [32, 128])
def test_real_data_within_promotion_budget(block):
  # The int32 partial sums are exact; the promotion carry + (P sa) sb is the
  # same fp32 arithmetic as "xla" in the same order, except that a GPU may
  # fuse the last multiply and add (one rounding fewer). Each of the C
  # chunks then moves the running sum by at most 2 roundings of magnitude
  # <= S = sum_j |P_j| sa sb, so |got - ref| <= 2 C u S (bitwise on CPU).
  bsz, m, n, k = ms.RAGGED
  fmt = Int8Block(block)
  a = quantize(normal((bsz, m, k), seed=1), fmt)
  b = quantize(normal((bsz, n, k), seed=2), fmt)
  got, want = np.asarray(_run(a, b)), np.asarray(ms.reference(a, b))
  chunks = -(-k // block)
  budget = 2 * chunks * ms.U * ms.abs_reference(a, b)
  assert np.all(np.abs(got - want) <= budget)
  if not ms.ON_GPU:
    ms.assert_bitwise(got, want)


def test_nan_scale_poisons_its_rows():
  # A NaN block scale (a tile that held NaN/inf) must reach the output.
  bsz, m, n, k = ms.ALIGNED
  a = ms.exact_operand(Int8Block(32), (bsz, m, k), "nan_a")
  b = ms.exact_operand(Int8Block(32), (bsz, n, k), "nan_b")
  a_s = a.scale.at[0, 1, 0].set(jnp.nan)
  got = np.asarray(
    int8_block_matmul(a.qvalue, a_s, b.qvalue, b.scale, block=32)
  )
  assert np.isnan(got[0, 32:64]).all()
  assert not np.isnan(got[0, :32]).any() and not np.isnan(got[0, 64:]).any()


@pytest.mark.skipif(ms.ON_GPU, reason="race detection is an interpreter tool")
def test_no_races_in_the_pipeline():
  bsz, m, n, k = ms.ALIGNED
  a = ms.exact_operand(Int8Block(32), (bsz, m, k), "race_a")
  b = ms.exact_operand(Int8Block(32), (bsz, n, k), "race_b")
  params = plgpu.InterpretGPUParams(detect_races=True)
  ms.assert_bitwise(_run(a, b, interpret=params), ms.reference(a, b))
  assert not ms.races_found()


def test_invalid_arguments_raise_with_the_reason():
  a = ms.exact_operand(Int8Block(32), (1, 64, 64), "err_a")
  with pytest.raises(ValueError, match="block must be one of"):
    int8_block_matmul(a.qvalue, a.scale, a.qvalue, a.scale, block=48)
  with pytest.raises(ValueError, match=r"a_s has shape \(1, 2, 3\)"):
    bad = jnp.ones((1, 2, 3), jnp.float32)
    int8_block_matmul(a.qvalue, bad, a.qvalue, a.scale, block=32)
  with pytest.raises(ValueError, match="b_q has shape"):
    int8_block_matmul(
      a.qvalue, a.scale, a.qvalue.astype(jnp.float32), a.scale, block=32
    )
  with pytest.raises(NotImplementedError, match="out_block=128"):
    int8_block_matmul(
      a.qvalue, a.scale, a.qvalue, a.scale, block=32, out_block=128
    )
  with pytest.raises(ValueError, match="needs seed"):
    int8_block_matmul(
      a.qvalue,
      a.scale,
      a.qvalue,
      a.scale,
      block=32,
      out_block=32,
      out_rounding="stochastic",
    )


@pytest.mark.parametrize(
  "block,out_block,rounding,shape",
  [
    (32, 32, "nearest", ms.EXACT),  # Jetfire forward
    (32, 32, "stochastic", ms.RAGGED),  # Jetfire dgrad
    (128, 64, "stochastic", ms.EXACT),
  ],
)
def test_int8_out_epilogue_matches_portable_reference(
  block, out_block, rounding, shape
):
  # Integer codes (row 31 of a all 127, the rest in [-5, 5]) and
  # power-of-two scales make the fp32 output exact on CPU and GPU alike
  # (multiples of 1/4 below 127 * 5 * 4 * K <= 2^22 for K <= 512), so its
  # requantization (absmax, scale, exact reciprocal, RTN or SR at the output
  # coordinates) must give the reference's codes and scales bit for bit.
  # Row 31 puts the maxima of the first blocks in a block's last row. With
  # block 32 a NaN operand scale poisons the last 32 rows of a: their output
  # blocks get scale NaN and codes 0.
  bsz, m, n, k = shape
  a = ms.exact_operand(Int8Block(block), (bsz, m, k), "oa", block)
  b = ms.exact_operand(Int8Block(block), (bsz, n, k), "ob", block)
  a_q, a_s = a.qvalue.at[:, 31, :].set(127), a.scale
  if block == 32:
    a_s = a_s.at[-1, -1, 0].set(jnp.nan)
  seed = jnp.uint32(2**32 - 3) if rounding == "stochastic" else None
  kw = dict(block=block, out_block=out_block, out_rounding=rounding)
  args = (a_q, a_s, b.qvalue, b.scale)
  got = ms.finished(_jitted_int8_out(*args, seed, **kw))
  want = portable.int8_block_matmul_reference(*args, seed=seed, **kw)
  for g, w in zip(got, want):
    ms.assert_bitwise(g, w)
  if block == 32:
    poisoned = -(-(m - (m - 1) // 32 * 32) // out_block)
    assert np.isnan(np.asarray(got[1])[-1, -poisoned:]).all()


@functools.partial(
  jax.jit, static_argnames=("block", "out_block", "out_rounding", "interpret")
)
def _jitted_int8_out(a_q, a_s, b_q, b_s, seed, **kw):
  return int8_block_matmul(a_q, a_s, b_q, b_s, seed=seed, **kw)


@pytest.mark.skipif(ms.ON_GPU, reason="race detection is an interpreter tool")
def test_no_races_in_the_int8_out_epilogue():
  # The fp32 tile and the row maxima go through SMEM between lanes.
  bsz, m, n, k = ms.ALIGNED
  a = ms.exact_operand(Int8Block(32), (bsz, m, k), "race_oa")
  b = ms.exact_operand(Int8Block(32), (bsz, n, k), "race_ob")
  params = plgpu.InterpretGPUParams(detect_races=True)
  ms.finished(
    _jitted_int8_out(
      a.qvalue,
      a.scale,
      b.qvalue,
      b.scale,
      jnp.uint32(1),
      block=32,
      out_block=32,
      out_rounding="stochastic",
      interpret=params,
    )
  )
  assert not ms.races_found()
