"""Every shipped Mosaic GPU configuration lowers for CUDA on this host.

``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))`` under an
abstract H200 runs the real Mosaic GPU lowering (wgmma shape, layout and
dtype rules, TMA tiling, SMEM budget, layout inference) without a GPU; PTX
compilation is left to the GPU run. Configs that break a hardware rule must
be refused by our own checks first, with a message naming the rule.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import tiles as T
from pallas_kernels.backend import cuda_lowering
from pallas_kernels.int4_matmul import Int4Operand
from pallas_kernels.mosaic import TuningConfig, default_config
from pallas_kernels.mosaic import quantize as mosaic_quantize
from pallas_kernels.mosaic._config import CANDIDATE_KERNELS, candidate_configs
from pallas_kernels.mosaic.fp8_matmul import fp8_matmul
from pallas_kernels.mosaic.int4_matmul import int4_matmul
from pallas_kernels.mosaic.int8_matmul import int8_block_matmul
from tests.pallas_kernels.kernel_support import E4M3, E5M2, fp8_scale_shape

SHAPE = (1, 256, 512, 512)  # B, M, N, K: several CTA tiles per SM loop
RAGGED = (2, 200, 328, 416)
QUANTIZE_SHAPE = (1, 256, 512)  # B, M, K: several CTA bands
QUANTIZE_RAGGED = (2, 70, 45)


def _lowers(kernel, *args, **kw) -> bool:
  """Whether ``kernel(*args, **kw)`` lowers to a Mosaic GPU custom call."""
  fn = functools.partial(kernel, interpret=False, **kw)
  with cuda_lowering():
    lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
  return "mosaic_gpu" in lowered.as_text()


def _fp8_args(shape, a_tile, b_tile, a_dtype, b_dtype=E4M3):
  """Zero codes and unit scales of a (B, M, N, K) GEMM over the tiles."""
  b, m, n, k = shape
  args = []
  for rows, tile, dtype in ((m, a_tile, a_dtype), (n, b_tile, b_dtype)):
    s = fp8_scale_shape((b, rows, k), tile)
    args += [jnp.zeros((b, rows, k), dtype), jnp.ones(s, jnp.float32)]
  return args


def _int8_args(shape, block):
  return _fp8_args(shape, (block, block), (block, block), jnp.int8, jnp.int8)


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_int8_block_matmul_lowers(block, out_dtype):
  args = _int8_args(SHAPE, block)
  assert _lowers(int8_block_matmul, *args, block=block, out_dtype=out_dtype)


@pytest.mark.parametrize(
  "block,out_block,rounding",
  [
    (32, 32, "nearest"),  # Jetfire forward
    (32, 32, "stochastic"),  # Jetfire dgrad
    (64, 64, "nearest"),
    (128, 32, "stochastic"),
    (128, 64, "stochastic"),
  ],
)
def test_int8_out_epilogue_lowers(block, out_block, rounding):
  kw = dict(block=block, out_block=out_block, out_rounding=rounding)
  args = _int8_args(SHAPE, block)
  assert _lowers(int8_block_matmul, *args, **kw, seed=jnp.uint32(5))


def test_ragged_int8_out_epilogue_lowers():
  args = _int8_args(RAGGED, 32)
  assert _lowers(int8_block_matmul, *args, block=32, out_block=32)


FP8_CASES = [  # a_tile, b_tile, a_dtype, out_dtype[, b_dtype]
  (None, None, E4M3, jnp.bfloat16),
  (None, None, E5M2, jnp.float32),
  (None, None, E4M3, jnp.bfloat16, E5M2),  # x^T . g^T (fp8_current wgrad)
  ((1, None), (1, None), E4M3, jnp.float32),
  ((1, 128), (128, 128), E4M3, jnp.bfloat16),
  ((1, 128), (128, 128), E5M2, jnp.float32),
  ((1, 128), (1, 128), E4M3, jnp.float32),
]


@pytest.mark.parametrize("case", FP8_CASES, ids=str)
def test_fp8_matmul_lowers(case):
  a_tile, b_tile, a_dtype, out_dtype, *b_dtype = case
  args = _fp8_args(SHAPE, a_tile, b_tile, a_dtype, *b_dtype)
  kw = dict(a_tile=a_tile, b_tile=b_tile, out_dtype=out_dtype)
  assert _lowers(fp8_matmul, *args, **kw)


def _int4_args(shape, tile, a_packed, b_packed):
  """Zero codes (uint8 packed or int8) and unit scales, K-major."""
  b, m, n, k = shape
  args = []
  for rows, packed in ((m, a_packed), (n, b_packed)):
    codes = (b, rows, k // 2 if packed else k)
    args += [
      jnp.zeros(codes, jnp.uint8 if packed else jnp.int8),
      jnp.ones(T.scale_shape((b, rows, k), tile), jnp.float32),
    ]
  return args


@pytest.mark.parametrize(
  "tile", [None, (32, 32), (64, 64), (128, 128)], ids=str
)
@pytest.mark.parametrize("packed", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shape", [SHAPE, RAGGED], ids=["aligned", "ragged"])
def test_int4_matmul_lowers(tile, packed, shape):
  """Every scale tile and INT4/int8 mix of the Hopper INT4 GEMM (bf16 out,
  as the op asks)."""
  a, b = Int4Operand(tile, packed[0]), Int4Operand(tile, packed[1])
  args = _int4_args(shape, tile, *packed)
  assert _lowers(int4_matmul, *args, a=a, b=b, out_dtype=jnp.bfloat16)


def test_int4_b_needs_whole_unpacking_bands():
  config = dataclasses.replace(
    default_config(promoted=True, n_sub=1, out_itemsize=4), tile_n=96
  )
  packed = Int4Operand((128, 128), packed=True)
  args = _int4_args(SHAPE, (128, 128), True, True)
  with pytest.raises(ValueError, match="tile_n must be a multiple of 64"):
    _lowers(int4_matmul, *args, a=packed, b=packed, config=config)


def test_ragged_shapes_lower():
  assert _lowers(int8_block_matmul, *_int8_args(RAGGED, 32), block=32)
  args = _fp8_args(RAGGED, None, None, E4M3)
  assert _lowers(fp8_matmul, *args, a_tile=None, b_tile=None)


@pytest.mark.parametrize(
  "change,message",
  [
    (dict(tile_n=264), "N a multiple of 8 and at most 256"),
    (dict(wg_tile_m=32), "64 or 128 rows per warpgroup"),
    (dict(tile_k=80), "tile_k=80 must be a multiple of the 32-wide"),
    (dict(wg_tile_m=128, tile_n=256), "accumulator registers"),
    (dict(max_concurrent_steps=8), "bytes of shared memory"),
  ],
)
def test_configs_that_break_hardware_rules_are_refused(change, message):
  base = default_config(promoted=True, n_sub=4, out_itemsize=4)
  config = dataclasses.replace(base, **change)
  with pytest.raises(ValueError, match=message):
    _lowers(int8_block_matmul, *_int8_args(SHAPE, 32), block=32, config=config)


def test_k_steps_must_hold_whole_promoted_blocks():
  config, args = TuningConfig(tile_k=64), _int8_args(SHAPE, 128)
  with pytest.raises(ValueError, match="multiple of the 128-wide K blocks"):
    _lowers(int8_block_matmul, *args, block=128, config=config)


def test_default_configs_fit_the_hardware():
  for promoted, n_sub in ((True, 4), (True, 1), (False, 1)):
    for size in (2, 4):
      config = default_config(promoted=promoted, n_sub=n_sub, out_itemsize=size)
      assert isinstance(config, TuningConfig)
      assert config.max_concurrent_steps >= 3
  for packed in ((True, True), (False, True), (True, False)):  # INT4 slots
    for promoted, n_sub in ((True, 4), (True, 1), (False, 1)):
      config = default_config(
        promoted=promoted, n_sub=n_sub, out_itemsize=2, packed=packed
      )
      assert config.max_concurrent_steps >= 3, (packed, promoted, config)
  for n_sub in (4, 1):  # the INT8-out epilogue stages its tiles in SMEM
    config = default_config(
      promoted=True, n_sub=n_sub, out_itemsize=4, requantize=True
    )
    assert config.max_concurrent_steps >= 3


def test_candidate_configs_lower():
  # The H200 run (benchmarks/_sweep.py) times these alternatives (bf16 out,
  # as there); a lowering error there would waste device time, so every one
  # must lower here first.
  for kernel in CANDIDATE_KERNELS:
    for config in candidate_configs(kernel):
      kw = dict(out_dtype=jnp.bfloat16, config=config)
      if kernel.startswith("int8"):
        kw["block"] = int(kernel.removeprefix("int8_block"))
        args, fn = _int8_args(SHAPE, kw["block"]), int8_block_matmul
      else:
        per_tensor = kernel == "fp8_tensor"
        tiles = (None, None) if per_tensor else ((1, 128), (128, 128))
        kw.update(a_tile=tiles[0], b_tile=tiles[1])
        args, fn = _fp8_args(SHAPE, *tiles, E4M3), fp8_matmul
      assert _lowers(fn, *args, **kw), (kernel, config)


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_quantize_int8_block_with_transpose_lowers(block, rounding):
  kw = dict(block=block, rounding=rounding, seed=3, transpose=True)
  x = jnp.zeros(QUANTIZE_SHAPE, jnp.bfloat16)
  assert _lowers(mosaic_quantize.quantize_int8_block, x, **kw)


@pytest.mark.parametrize("tile", [None, (32, 32), (128, 128)])
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("transpose", [False, True])
def test_quantize_fp8_lowers(tile, dtype, transpose):
  kw = dict(dtype=dtype, tile=tile, rounding="stochastic", seed=1)
  x = jnp.zeros(QUANTIZE_SHAPE, jnp.float32)
  assert _lowers(mosaic_quantize.quantize_fp8, x, transpose=transpose, **kw)


@pytest.mark.parametrize("shape", [QUANTIZE_SHAPE, (2, 200, 300)])
@pytest.mark.parametrize("x_dtype", [jnp.bfloat16, jnp.float32])
def test_quantize_fp8_dual_lowers(shape, x_dtype):
  kw = dict(dtype=E4M3, row_tile=(1, 128), column_tile=(128, 1))
  x = jnp.zeros(shape, x_dtype)
  assert _lowers(mosaic_quantize.quantize_fp8_dual, x, **kw)


@pytest.mark.parametrize("shape", [QUANTIZE_SHAPE, (2, 200, 300)])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_requantize_fp8_lowers(shape, rounding):
  b, m, k = shape
  args = (jnp.zeros(shape, E4M3), jnp.ones((b, m, -(-k // 128)), jnp.float32))
  kw = dict(in_tile=(1, 128), tile=(128, 1), dtype=E4M3, rounding=rounding)
  assert _lowers(mosaic_quantize.requantize_fp8, *args, **kw, seed=2)


@pytest.mark.parametrize(
  "tile", [(1, None), (1, 32), (1, 64), (1, 128), (1, 256), (64, 1), (128, 1)]
)
@pytest.mark.parametrize("x_dtype", [jnp.float32, jnp.bfloat16])
def test_quantize_fp8_rows_and_groups_lower(tile, x_dtype):
  kw = dict(dtype=E5M2, tile=tile, rounding="stochastic", seed=1)
  x = jnp.zeros(QUANTIZE_SHAPE, x_dtype)
  assert _lowers(mosaic_quantize.quantize_fp8, x, **kw)


@pytest.mark.parametrize("tile", [(1, None), (1, 128), (256, 1)])
def test_ragged_fp8_rows_and_groups_lower(tile):
  x = jnp.zeros(QUANTIZE_RAGGED, jnp.float16)
  assert _lowers(mosaic_quantize.quantize_fp8, x, dtype=E4M3, tile=tile)


@pytest.mark.parametrize(
  "tile,code_dtype", [(None, E4M3), ((128, 128), E5M2), ((32, 32), jnp.int8)]
)
def test_dequantize_lowers(tile, code_dtype):
  b, m, k = QUANTIZE_SHAPE
  s = (1, 1, 1) if tile is None else (b, m // tile[0], k // tile[0])
  args = (jnp.zeros(QUANTIZE_SHAPE, code_dtype), jnp.ones(s, jnp.float32))
  kw = dict(tile=tile, out_dtype=jnp.bfloat16)
  assert _lowers(mosaic_quantize.dequantize, *args, **kw)


def test_ragged_quantize_lowers():
  x, kw = jnp.zeros(QUANTIZE_RAGGED, jnp.float16), dict(transpose=True)
  assert _lowers(mosaic_quantize.quantize_int8_block, x, block=32, **kw)
