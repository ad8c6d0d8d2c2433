"""Mosaic GPU quantize/dequantize kernels: the same bits as formats.quantize.

CPU (CI): the kernels run in the Mosaic GPU interpreter on small shapes; on
the H200 (``benchmarks/gpu_check.sh``) the same tests run compiled on
realistic shapes (``mosaic_support.ON_GPU``). Every comparison is exact:
codes and scales against the plain-jnp twins of :mod:`pallas_kernels.quantize`
(correctly rounded reciprocal, any backend) and against
``lowprec_jax.formats.quantize`` under ``jit`` (which also takes the
correctly rounded reciprocal, ``pallas_kernels.numerics.reciprocal_rn``,
rather than the GPU's approximate ``div.full.f32``). The library comparison
is its own test, so a GPU failure there points at the library, not at the
kernels.
"""

import jax
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lowprec_jax.formats import Fp8, Int8Block
from pallas_kernels import quantize as portable
from pallas_kernels.mosaic import quantize as Q
from pallas_kernels.numerics import corrected_reciprocal, reciprocal_rn
from tests.helpers import normal
from tests.pallas_kernels.mosaic_support import ON_GPU, finished, races_found
from tests.pallas_kernels.test_quantize import _bits, _library, assert_bitwise

if ON_GPU:
  ALIGNED, RAGGED = (1, 2048, 4096), (2, 1000, 1000)
else:
  ALIGNED, RAGGED = (1, 64, 256), (2, 70, 45)
E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2


def _with_specials(x):
  """A NaN, an inf, an all-zero block, a huge and a tiny block."""
  x = x.at[0, 0, 0].set(jnp.nan).at[0, -1, -1].set(jnp.inf)
  x = x.at[0, 32:64, 32:64].set(0.0).at[0, 32:64, 0:32].mul(1e37)
  return x.at[-1, :32, 32:64].mul(1e-42)


def _int8(x, block, rounding, seed):
  return finished(
    Q.quantize_int8_block(
      x, block=block, rounding=rounding, seed=seed, transpose=True
    )
  )


@pytest.mark.parametrize("shape", [ALIGNED, RAGGED], ids=["aligned", "ragged"])
@pytest.mark.parametrize("block", [32, 128])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int8_block_with_transpose_matches_twin(shape, block, rounding):
  x = _with_specials(normal(shape, seed=block) * 3)
  seed = 2**32 - 1 if rounding == "stochastic" else None
  got = _int8(x, block, rounding, seed)
  want = portable.quantize_int8_block_reference(
    x, block=block, rounding=rounding, seed=seed, transpose=True
  )
  for g, w in zip(got, want):
    assert_bitwise(g, w)
  assert int(np.min(np.asarray(got[0]))) >= -127


@pytest.mark.parametrize("tile", [None, (128, 128), (32, 32)])
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_fp8_matches_twin(tile, dtype):
  shape = RAGGED if tile == (32, 32) else ALIGNED
  x = normal(shape, seed=3, dtype=jnp.bfloat16) * 100
  rounding = "stochastic" if dtype == E5M2 else "nearest"
  kw = dict(dtype=dtype, tile=tile, rounding=rounding, seed=9)
  got = finished(Q.quantize_fp8(x, **kw))
  for g, w in zip(got, portable.quantize_fp8_reference(x, **kw)):
    assert_bitwise(g, w)


@pytest.mark.parametrize(
  "tile, rounding",
  [
    ((1, None), "stochastic"),
    ((1, 128), "nearest"),
    ((1, 128), "stochastic"),
    ((1, 32), "nearest"),
    ((128, 1), "stochastic"),
    ((64, 1), "nearest"),
  ],
)
def test_fp8_rows_and_groups_match_twin(tile, rounding):
  """Per-row, 1 x G and G x 1 scales (row/column reductions in the WGMMA
  layout), special values included; ragged except one aligned bf16 case."""
  aligned = tile == (1, 128) and rounding == "nearest"
  x = normal(ALIGNED if aligned else RAGGED, seed=5) * 30
  x = _with_specials(x.astype(jnp.bfloat16) if aligned else x)
  dtype = E5M2 if rounding == "stochastic" else E4M3
  kw = dict(dtype=dtype, tile=tile, rounding=rounding, seed=2**31 + 5)
  got = finished(Q.quantize_fp8(x, **kw))
  for g, w in zip(got, portable.quantize_fp8_reference(x, **kw)):
    assert_bitwise(g, w)


def test_fp8_per_tensor_poisoned_by_nan():
  x = normal(RAGGED, seed=4).at[1, 5, 7].set(jnp.nan)
  q, s = finished(Q.quantize_fp8(x, dtype=E4M3, tile=None))
  assert np.isnan(np.asarray(s)).all() and not np.asarray(q, np.float32).any()


@pytest.mark.parametrize(
  "fmt, rounding",
  [
    (Int8Block(32), "stochastic"),
    (Fp8.per_tensor(), "nearest"),
    (Fp8.groups(128), "stochastic"),
  ],
  ids=["int8_32_sr", "fp8_tensor", "fp8_1x128_sr"],
)
def test_same_bits_as_formats_quantize(fmt, rounding):
  """The library under jit. On the H200 this also checks that XLA's
  ``1 / scale`` (div.full) is the correctly rounded one for these scales."""
  x = normal(RAGGED, seed=6) * 5
  seed = 1234
  if isinstance(fmt, Int8Block):
    got = _int8(x, fmt.block, rounding, seed)[:2]
  else:
    got = finished(
      Q.quantize_fp8(x, dtype=E4M3, tile=fmt.tile, rounding=rounding, seed=seed)
    )
  want = _library(x, jnp.uint32(seed), fmt=fmt, rounding=rounding)
  assert_bitwise(got[0], want[0])
  assert_bitwise(got[1], want[1])


@pytest.mark.parametrize("tile", [None, (32, 32)])
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_dequantize_matches_twin(tile, out_dtype):
  x = normal(RAGGED, seed=8) * 7
  q, s = portable.quantize_fp8_reference(x, dtype=E4M3, tile=tile)
  got = finished(Q.dequantize(q, s, tile=tile, out_dtype=out_dtype))
  want = portable.dequantize_reference(q, s, tile=tile, out_dtype=out_dtype)
  assert_bitwise(got, want)


def test_corrected_reciprocal_is_round_to_nearest():
  """From 1/d moved by up to 2 ulp (div.full's bound) back to RN(1/d), on
  random scales, powers of two and their predecessors (binade edges)."""
  bits = np.random.default_rng(0).integers(1 << 23, 0x7E800000, 20000)
  pow2 = 2.0 ** np.arange(-125, 126, dtype=np.float64)
  d = np.concatenate(
    [
      bits.astype(np.uint32).view(np.float32),
      pow2.astype(np.float32),
      np.nextafter(pow2.astype(np.float32), np.float32(0)),
    ]
  )
  d = jnp.asarray(d)
  want = _bits(jax.jit(reciprocal_rn)(d))
  for offset in (-2, -1, 0, 1, 2):
    r = lax.bitcast_convert_type(
      lax.bitcast_convert_type(1.0 / d, jnp.int32) + offset, jnp.float32
    )
    assert_bitwise(_bits(jax.jit(corrected_reciprocal)(d, r)), want)


@pytest.mark.skipif(ON_GPU, reason="race detection is an interpreter feature")
def test_no_races_with_transpose():
  x = normal((1, 64, 128), seed=2)
  params = plgpu.InterpretGPUParams(detect_races=True)
  finished(
    Q.quantize_int8_block(
      x,
      block=32,
      rounding="stochastic",
      seed=1,
      transpose=True,
      interpret=params,
    )
  )
  assert not races_found()


@pytest.mark.skipif(ON_GPU, reason="race detection is an interpreter feature")
def test_no_races_in_group_kernels():
  """The column reduction shares SMEM scratch across warps; the row scales
  go out of an SMEM row written by replicated lanes."""
  x = normal((1, 128, 128), seed=3)
  params = plgpu.InterpretGPUParams(detect_races=True)
  for tile in [(128, 1), (1, 128)]:
    finished(
      Q.quantize_fp8(
        x,
        dtype=E4M3,
        tile=tile,
        rounding="stochastic",
        seed=1,
        interpret=params,
      )
    )
    assert not races_found(), tile


def test_unsupported_tiles_raise_with_the_tile():
  x = jnp.zeros((1, 8, 8), jnp.float32)
  with pytest.raises(NotImplementedError, match=r"\(1, 16\)"):
    Q.quantize_fp8(x, dtype=E4M3, tile=(1, 16))
  with pytest.raises(NotImplementedError, match=r"\(32, 1\)"):
    Q.quantize_fp8(x, dtype=E4M3, tile=(32, 1))
  with pytest.raises(NotImplementedError, match=r"dequantize.*\(1, 128\)"):
    Q.dequantize(
      jnp.zeros((1, 8, 8), E4M3),
      jnp.ones((1, 8, 1), jnp.float32),
      tile=(1, 128),
    )
  with pytest.raises(ValueError, match="block must be one of"):
    Q.quantize_int8_block(x, block=16)
