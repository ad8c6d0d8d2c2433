"""The Hopper scaled FP8 GEMM against the ``"xla"`` implementation.

On CPU through the Mosaic GPU interpreter (small shapes), on a GPU compiled
(realistic shapes); see ``mosaic_support``.
"""

import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Fp8, quantize
from pallas_kernels.mosaic.fp8_matmul import fp8_matmul
from tests.helpers import normal, rel_err
from tests.pallas_kernels import mosaic_support as ms

PAIRS = {
  "tensor": (Fp8.per_tensor, Fp8.per_tensor),
  "row": (Fp8.per_row, Fp8.per_row),
  "block": (lambda d: Fp8.groups(128, d), lambda d: Fp8.blocks(128, d)),
  "groups": (lambda d: Fp8.groups(128, d), lambda d: Fp8.groups(128, d)),
}


def _formats(pair, a_dtype):
  fa, fb = PAIRS[pair]
  return fa(a_dtype), fb("e4m3")


def _run(a, b, **kw):
  return ms.finished(
    fp8_matmul(
      a.qvalue,
      a.scale,
      b.qvalue,
      b.scale,
      a_tile=a.format.tile,
      b_tile=b.format.tile,
      **kw,
    )
  )


@pytest.mark.parametrize(
  "pair,a_dtype,shape",
  [
    ("tensor", "e4m3", ms.EXACT),
    ("tensor", "e5m2", ms.RAGGED),
    ("row", "e4m3", ms.RAGGED),
    ("block", "e5m2", ms.EXACT),
    ("block", "e4m3", ms.RAGGED),
    ("groups", "e4m3", ms.RAGGED),
  ],
)
def test_exact_with_small_integers(pair, a_dtype, shape):
  # Codes in [-5, 5] are exact in E4M3 and E5M2, scales in {1/2, 1, 2}.
  # Every partial sum is an integer below 25 K <= 2^14 (EXACT has K = 512 on
  # a GPU): exact even in Hopper's FP8 accumulator, which keeps about 14
  # bits (DeepSeek-V3, sec. 3.3.2). Products and sums of scaled chunks are
  # multiples of 1/4 below 2^22, so the result is bit-exact.
  bsz, m, n, k = shape
  fa, fb = _formats(pair, a_dtype)
  a = ms.exact_operand(fa, (bsz, m, k), "a", pair, a_dtype)
  b = ms.exact_operand(fb, (bsz, n, k), "b", pair)
  ms.assert_bitwise(_run(a, b), ms.reference(a, b))


def test_bf16_output_is_the_rounded_f32_result():
  bsz, m, n, k = ms.EXACT
  fa, fb = _formats("tensor", "e4m3")
  a = ms.exact_operand(fa, (bsz, m, k), "a16")
  b = ms.exact_operand(fb, (bsz, n, k), "b16")
  got = _run(a, b, out_dtype=jnp.bfloat16)
  ms.assert_bitwise(got, ms.reference(a, b, jnp.bfloat16))


@pytest.mark.parametrize("pair", ["tensor", "block"])
def test_real_data_within_budget(pair):
  # CPU: the interpreter's fp32 matmul sums in another order than XLA's dot,
  # so the products of one chunk (|terms| summing to S) differ by at most
  # 2 c u S each for a chunk of c terms (standard summation bound). GPU:
  # Hopper's FP8 wgmma keeps ~14 bits in its accumulator (DeepSeek-V3), a
  # relative error up to ~2^-14 per 32-wide k-step; over n steps of a
  # random-sign sum that grows like sqrt(n) 2^-14 relative to the partial
  # sums, which can exceed the result by sqrt(n). Per-tensor: n = K/32 = 128
  # steps, 128 * 2^-14 = 2^-7; 1x128 blocks promote every 4 steps: 2^-9.
  # A wrong kernel is off by O(1).
  bsz, m, n, k = ms.ALIGNED
  fa, fb = _formats(pair, "e4m3")
  a = quantize(normal((bsz, m, k), seed=3), fa)
  b = quantize(normal((bsz, n, k), seed=4), fb)
  got, want = np.asarray(_run(a, b)), np.asarray(ms.reference(a, b))
  if ms.ON_GPU:
    assert rel_err(got, want) <= (2.0**-7 if pair == "tensor" else 2.0**-9)
  else:
    chunk = k if pair == "tensor" else 128
    budget = 2 * chunk * ms.U * ms.abs_reference(a, b)
    assert np.all(np.abs(got - want) <= budget)


@pytest.mark.skipif(ms.ON_GPU, reason="race detection is an interpreter tool")
def test_no_races_without_promotion():
  bsz, m, n, k = ms.ALIGNED
  fa, fb = _formats("tensor", "e4m3")
  a = ms.exact_operand(fa, (bsz, m, k), "race_a")
  b = ms.exact_operand(fb, (bsz, n, k), "race_b")
  params = plgpu.InterpretGPUParams(detect_races=True)
  ms.assert_bitwise(_run(a, b, interpret=params), ms.reference(a, b))
  assert not ms.races_found()


def test_unsupported_and_invalid_requests_raise():
  fa, fb = _formats("tensor", "e4m3")
  a = ms.exact_operand(fa, (1, 64, 64), "err_a")
  b = ms.exact_operand(fb, (1, 64, 64), "err_b")
  with pytest.raises(NotImplementedError, match=r"got \(1, None\) x None"):
    fp8_matmul(
      a.qvalue, a.scale, b.qvalue, b.scale, a_tile=(1, None), b_tile=None
    )
  with pytest.raises(ValueError, match="b_q has shape"):
    fp8_matmul(
      a.qvalue,
      a.scale,
      b.qvalue.astype(jnp.float8_e5m2),
      b.scale,
      a_tile=None,
      b_tile=None,
    )
  with pytest.raises(ValueError, match=r"a_s has shape \(1, 64, 1\)"):
    per_row = jnp.ones((1, 64, 1), jnp.float32)
    fp8_matmul(a.qvalue, per_row, b.qvalue, b.scale, a_tile=None, b_tile=None)
