"""The fused Hadamard + INT4 quantize + pack kernel against its jnp twin.

Codes, derivative codes and scales must be bit-identical: the kernel runs
the reference's own butterflies and rounding rules on its tiles
(``pallas_kernels/hadamard_quantize.py``). Shapes are ragged in rows and in
K relative to the program tile; heavy-tailed data (Student t, 3 degrees of
freedom) exercises clipping; a NaN block and a zero block check the
special-value contract.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import hadamard_quantize as H
from pallas_kernels.clip_search import CLIP_CANDIDATES
from pallas_kernels.hadamard import block_hadamard

CASES = [  # (shape, hadamard block, scale block, dtype)
  ((2, 40, 96), 32, 32, jnp.float32),
  ((1, 70, 128), 128, 32, jnp.bfloat16),
  ((1, 64, 256), 8, 64, jnp.float16),
  ((2, 33, 64), 1, 16, jnp.float32),
]


def _x(shape, dtype, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_t(3, shape), dtype)


@pytest.mark.parametrize("shape, h, block, dtype", CASES, ids=str)
def test_blocks_match_the_reference(shape, h, block, dtype):
  x = _x(shape, dtype)
  q, s = H.hadamard_quantize_blocks(x, hadamard_block=h, block=block)
  q_ref, s_ref = H.hadamard_quantize_blocks_reference(
    x, hadamard_block=h, block=block
  )
  assert q.shape == (*shape[:2], shape[2] // 2) and q.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(q), np.asarray(q_ref))
  np.testing.assert_array_equal(np.asarray(s), np.asarray(s_ref))


@pytest.mark.parametrize("shape, h, block, dtype", CASES[::3], ids=str)
def test_clip_search_matches_the_reference(shape, h, block, dtype):
  x = _x(shape, dtype, seed=3)
  kw = dict(hadamard_block=h, block=block, clip_candidates=CLIP_CANDIDATES)
  q, s = H.hadamard_quantize_blocks(x, **kw)
  q_ref, s_ref = H.hadamard_quantize_blocks_reference(x, **kw)
  np.testing.assert_array_equal(np.asarray(q), np.asarray(q_ref))
  np.testing.assert_array_equal(np.asarray(s), np.asarray(s_ref))
  plain = H.hadamard_quantize_blocks_reference(x, hadamard_block=h, block=block)
  assert not np.array_equal(np.asarray(s), np.asarray(plain[1]))  # it searched


@pytest.mark.parametrize("shape, h, block, dtype", CASES[:3], ids=str)
def test_lsq_matches_the_reference(shape, h, block, dtype):
  x = _x(shape, dtype, seed=1)
  step = jnp.float32(0.3)  # clips the t-distributed tail
  q, d = H.hadamard_quantize_lsq(x, step, hadamard_block=h)
  q_ref, d_ref = H.hadamard_quantize_lsq_reference(x, step, hadamard_block=h)
  np.testing.assert_array_equal(np.asarray(q), np.asarray(q_ref))
  np.testing.assert_array_equal(np.asarray(d), np.asarray(d_ref))
  assert (np.asarray(d_ref) != 0).any()


def test_special_values():
  x = _x((1, 32, 128), jnp.float32)
  x = x.at[0, 3, 5].set(jnp.nan).at[:, :, 64:96].set(0.0)
  q, s = H.hadamard_quantize_blocks(x, hadamard_block=4, block=32)
  q_ref, s_ref = H.hadamard_quantize_blocks_reference(
    x, hadamard_block=4, block=32
  )
  np.testing.assert_array_equal(np.asarray(q), np.asarray(q_ref))
  np.testing.assert_array_equal(np.asarray(s), np.asarray(s_ref))
  assert np.isnan(s[0, 0, 0]) and s[0, 0, 2] == 1.0  # NaN block, zero block
  assert not np.asarray(q[0, :, :16]).any()  # the NaN block's codes are 0


def test_bad_input():
  with pytest.raises(ValueError, match="must be even"):
    H.hadamard_quantize_blocks(jnp.zeros((1, 4, 7)), hadamard_block=1, block=32)
  with pytest.raises(ValueError, match="must divide the contraction"):
    H.hadamard_quantize_lsq(jnp.zeros((1, 4, 24)), 1.0, hadamard_block=16)
  with pytest.raises(ValueError, match="expected a 3-D array"):
    H.hadamard_quantize_lsq(jnp.zeros((4, 24), jnp.int8), 1.0, hadamard_block=2)
  with pytest.raises(ValueError, match="block must be one of"):
    H.hadamard_quantize_blocks(
      jnp.zeros((1, 4, 24)), hadamard_block=2, block=12
    )


@pytest.mark.parametrize(
  "shape, h, out_dtype",
  [((2, 40, 96), 32, jnp.bfloat16), ((1, 33, 256), 256, jnp.float32)],
  ids=str,
)
def test_rotate_matches_the_reference(shape, h, out_dtype):
  """The backward's rotation: block_hadamard cast to out_dtype, bit for bit."""
  x = _x(shape, jnp.float32, seed=2)
  out = H.hadamard_rotate(x, hadamard_block=h, out_dtype=out_dtype)
  ref = block_hadamard(x, h).astype(out_dtype)
  assert out.dtype == out_dtype
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_transposed_storage():
  """A weight stored (K, N) is read as it lies (blocks, clip search, LSQ),
  and the backward's rotation writes (K, N): the same bits as transposing
  in memory first."""
  w_kn = _x((2, 96, 40), jnp.float32, seed=4)  # (B, K, N)
  for kw in (dict(block=32), dict(block=16, clip_candidates=CLIP_CANDIDATES)):
    ours = H.hadamard_quantize_blocks(
      w_kn, hadamard_block=32, transposed=True, **kw
    )
    ref = H.hadamard_quantize_blocks_reference(w_kn.mT, hadamard_block=32, **kw)
    for a, b in zip(ours, ref, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ours = H.hadamard_quantize_lsq(w_kn, 0.3, hadamard_block=8, transposed=True)
  ref = H.hadamard_quantize_lsq_reference(w_kn.mT, 0.3, hadamard_block=8)
  for a, b in zip(ours, ref, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  dv = _x((2, 40, 96), jnp.float32, seed=5)
  out = H.hadamard_rotate(
    dv, hadamard_block=32, out_dtype=jnp.bfloat16, transposed_out=True
  )
  ref = block_hadamard(dv, 32).astype(jnp.bfloat16).mT
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
