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
from pallas_kernels import hadamard_quantize as HQ
from pallas_kernels import int4_matmul as I4
from pallas_kernels import int8_matmul as I
from pallas_kernels import quantize as Q
from pallas_kernels import split_quantize as SQ
from pallas_kernels import tiles
from pallas_kernels.backend import cuda_lowering
from pallas_kernels.clip_search import CLIP_CANDIDATES
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


def _int4_operand(shape, op):
  """(codes, scales) structs of a logical (B, R, K) INT4-GEMM operand."""
  b, r, k = shape
  scales = tiles.scale_shape(shape, op.tile)
  stored = (b, k, r) if op.transposed else (b, r, k)
  if op.transposed:
    scales = (scales[0], scales[2], scales[1])
  if op.packed:
    return S((*stored[:-1], stored[-1] // 2), jnp.uint8), S(scales)
  return S(stored, jnp.int8), S(scales)


@pytest.mark.parametrize("tile", [None, (16, 16), (32, 32), (128, 128)])
@pytest.mark.parametrize(
  "a_storage, b_storage",
  list(itertools.product(itertools.product((False, True), repeat=2), repeat=2)),
  ids=str,
)
def test_int4_matmul(tile, a_storage, b_storage):
  a, b = I4.Int4Operand(tile, *a_storage), I4.Int4Operand(tile, *b_storage)
  args = (*_int4_operand((B, M, K), a), *_int4_operand((B, N, K), b))
  _assert_lowers(I4.int4_matmul, *args, a=a, b=b)


@pytest.mark.parametrize("hadamard_block", [1, 2, 128, 1024])
@pytest.mark.parametrize("block, clip", [(None, 1), (16, 1), (32, 1), (16, 4)])
def test_hadamard_quantize(hadamard_block, block, clip):
  x = S((B, M, 2048), jnp.bfloat16)
  if clip > 1:
    _assert_lowers(
      HQ.hadamard_quantize_blocks, x, hadamard_block=hadamard_block,
      block=block, clip_candidates=CLIP_CANDIDATES[:clip],
    )  # fmt: skip
  elif block is None:
    _assert_lowers(
      HQ.hadamard_quantize_lsq, x, S(()), hadamard_block=hadamard_block
    )
  else:
    _assert_lowers(
      HQ.hadamard_quantize_blocks, x, hadamard_block=hadamard_block,
      block=block,
    )  # fmt: skip


@pytest.mark.parametrize("split", ["faithful", "full"])
@pytest.mark.parametrize("parts", [False, True])
def test_split_quantize(split, parts):
  g = S((B, M, N), jnp.bfloat16)
  _assert_lowers(
    SQ.split_quantize, g, S(()), S((), jnp.uint32), split=split, parts=parts
  )


@pytest.mark.parametrize("hadamard_block", [2, 128, 1024])
@pytest.mark.parametrize("transposed", [False, True])
def test_hadamard_rotate(hadamard_block, transposed):
  x = S((B, M, 2048))
  _assert_lowers(
    HQ.hadamard_rotate, x, hadamard_block=hadamard_block,
    out_dtype=jnp.bfloat16, transposed_out=transposed,
  )  # fmt: skip


@pytest.mark.parametrize("block", [None, 32])
def test_hadamard_quantize_transposed(block):
  w = S((B, 2048, N), jnp.bfloat16)  # (B, K, N)
  if block is None:
    _assert_lowers(
      HQ.hadamard_quantize_lsq, w, S(()), hadamard_block=128, transposed=True
    )
  else:
    _assert_lowers(
      HQ.hadamard_quantize_blocks, w, hadamard_block=128, block=block,
      transposed=True,
    )  # fmt: skip


@pytest.mark.parametrize("block", [16, 32])
def test_split_quantize_blocks(block):
  g = S((B, M, N), jnp.bfloat16)
  _assert_lowers(
    SQ.split_quantize_blocks, g, S((), jnp.uint32), split="full", block=block
  )
