"""Every shipped kernel configuration lowers for CUDA on this CPU host.

``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))`` runs the real
Pallas Triton lowering (under an abstract H200), which rejects primitives
without a Triton rule (``round``, value slices, multi-axis reductions of
sharded values), non-power-of-two tensors and mixed-type dots. Shapes are
ragged so that the masked paths are the ones lowered. PTX compilation
happens later, on a GPU, and is not covered here.

The Triton backend is deprecated in jax 0.11; each lowering must emit that
DeprecationWarning (pytest.warns), so the day it turns into an error this
test says so. The library silences it in pyproject's filterwarnings.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import fp8_matmul as F
from pallas_kernels import int8_matmul as I
from pallas_kernels import quantize as Q
from pallas_kernels.backend import cuda_lowering
from tests.pallas_kernels.kernel_support import fp8_scale_shape

B, M, N, K = 2, 200, 136, 328
E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2
FP8_TILES = [None, (1, None), (128, 1)] + [
  t for g in (32, 64, 128) for t in ((1, g), (g, g))
]


def S(shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


def operand(shape, dtype, tile):
  """(codes, scales) structs of a (B, R, K) operand over ``tile``."""
  return S(shape, dtype), S(fp8_scale_shape(shape, tile))


def _assert_lowers(kernel, *args, **kw):
  fn = functools.partial(kernel, interpret=False, **kw)
  with pytest.warns(DeprecationWarning, match="Pallas Triton backend"):
    with cuda_lowering():
      lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
  assert pltriton.CUSTOM_CALL_TARGET_NAME in lowered.as_text()


QUANTIZE_INT8 = [
  (block, rounding, transpose, jnp.float32)
  for block, rounding, transpose in itertools.product(
    (32, 64, 128), ("nearest", "stochastic"), (False, True)
  )
] + [(64, "stochastic", True, jnp.bfloat16), (32, "nearest", True, jnp.float16)]


@pytest.mark.parametrize("block, rounding, transpose, dtype", QUANTIZE_INT8)
def test_quantize_int8_block(block, rounding, transpose, dtype):
  seed = 1 if rounding == "stochastic" else None
  kw = dict(block=block, rounding=rounding, seed=seed, transpose=transpose)
  _assert_lowers(Q.quantize_int8_block, S((B, M, K), dtype), **kw)


@pytest.mark.parametrize("tile", FP8_TILES)
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_quantize_fp8(tile, dtype, rounding):
  seed = 1 if rounding == "stochastic" else None
  kw = dict(dtype=dtype, tile=tile, rounding=rounding, seed=seed)
  _assert_lowers(Q.quantize_fp8, S((B, M, K), jnp.bfloat16), **kw)


DEQUANTIZE = [(jnp.int8, (b, b)) for b in (32, 64, 128)] + [
  (dtype, tile) for dtype in (E4M3, E5M2) for tile in FP8_TILES
]


@pytest.mark.parametrize("dtype, tile", DEQUANTIZE)
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_dequantize(dtype, tile, out_dtype):
  args = operand((B, M, K), dtype, tile)
  _assert_lowers(Q.dequantize, *args, tile=tile, out_dtype=out_dtype)


INT8_OUTPUTS = [
  dict(out_dtype=jnp.float32),
  dict(out_dtype=jnp.bfloat16),
  dict(out_dtype=jnp.float16),
] + [
  dict(out_block=ob, out_rounding=r, seed=1 if r == "stochastic" else None)
  for ob in (32, 64, 128)
  for r in ("nearest", "stochastic")
]


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("out", INT8_OUTPUTS, ids=str)
def test_int8_block_matmul(block, out):
  a = operand((B, M, K), jnp.int8, (block, block))
  b = operand((B, N, K), jnp.int8, (block, block))
  _assert_lowers(I.int8_block_matmul, *a, *b, block=block, **out)


FP8_TILE_PAIRS = [(None, None), ((1, None), (1, None))] + [
  pair for g in F.GROUPS for pair in (((1, g), (g, g)), ((1, g), (1, g)))
]


@pytest.mark.parametrize("a_tile, b_tile", FP8_TILE_PAIRS)
@pytest.mark.parametrize("a_dtype, b_dtype", F.DTYPE_PAIRS, ids=str)
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_fp8_matmul(a_tile, b_tile, a_dtype, b_dtype, out_dtype):
  a, b = (
    operand((B, M, K), a_dtype, a_tile),
    operand((B, N, K), b_dtype, b_tile),
  )
  kw = dict(a_tile=a_tile, b_tile=b_tile, out_dtype=out_dtype)
  _assert_lowers(F.fp8_matmul, *a, *b, **kw)
