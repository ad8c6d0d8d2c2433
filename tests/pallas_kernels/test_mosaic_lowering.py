"""Every shipped Mosaic GPU configuration lowers for CUDA on this host.

``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))`` under an
abstract H200 runs the real Mosaic GPU lowering (wgmma shape, layout and
dtype rules, TMA tiling, SMEM budget, layout inference) without a GPU; PTX
compilation is left to the GPU run. Configs that break a hardware rule must
be refused by our own checks first, with a message naming the rule.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels._common import cuda_lowering
from pallas_kernels.mosaic import TuningConfig, default_config
from pallas_kernels.mosaic import quantize as mosaic_quantize
from pallas_kernels.mosaic._config import CANDIDATE_KERNELS, candidate_configs
from pallas_kernels.mosaic.fp8_matmul import fp8_matmul
from pallas_kernels.mosaic.int8_matmul import int8_block_matmul

CUSTOM_CALL = "mosaic_gpu"
SHAPE = (1, 256, 512, 512)  # B, M, N, K: several CTA tiles per SM loop
RAGGED = (2, 200, 328, 416)


def _lowered_text(fn, *args) -> str:
  with cuda_lowering():
    lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
  return lowered.as_text()


def _int8_args(shape, block):
  bsz, m, n, k = shape
  cd = lambda r: -(-r // block)  # noqa: E731
  return (
    jnp.zeros((bsz, m, k), jnp.int8),
    jnp.ones((bsz, cd(m), cd(k)), jnp.float32),
    jnp.zeros((bsz, n, k), jnp.int8),
    jnp.ones((bsz, cd(n), cd(k)), jnp.float32),
  )


def _fp8_args(shape, a_tile, b_tile, a_dtype):
  bsz, m, n, k = shape

  def scale(rows, tile):
    if tile is None:
      return jnp.ones((1, 1, 1), jnp.float32)
    tr, tc = tile
    cols = 1 if tc is None else -(-k // tc)
    return jnp.ones((bsz, -(-rows // tr), cols), jnp.float32)

  return (
    jnp.zeros((bsz, m, k), a_dtype),
    scale(m, a_tile),
    jnp.zeros((bsz, n, k), jnp.float8_e4m3fn),
    scale(n, b_tile),
  )


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_int8_block_matmul_lowers(block, out_dtype):
  fn = lambda *x: int8_block_matmul(  # noqa: E731
    *x, block=block, out_dtype=out_dtype, interpret=False
  )
  assert CUSTOM_CALL in _lowered_text(fn, *_int8_args(SHAPE, block))


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
  fn = lambda *x: int8_block_matmul(  # noqa: E731
    *x,
    block=block,
    out_block=out_block,
    out_rounding=rounding,
    seed=jnp.uint32(5),
    interpret=False,
  )
  assert CUSTOM_CALL in _lowered_text(fn, *_int8_args(SHAPE, block))


def test_ragged_int8_out_epilogue_lowers():
  fn = lambda *x: int8_block_matmul(  # noqa: E731
    *x, block=32, out_block=32, interpret=False
  )
  assert CUSTOM_CALL in _lowered_text(fn, *_int8_args(RAGGED, 32))


FP8_CASES = [
  (None, None, jnp.float8_e4m3fn, jnp.bfloat16),
  (None, None, jnp.float8_e5m2, jnp.float32),
  ((1, None), (1, None), jnp.float8_e4m3fn, jnp.float32),
  ((1, 128), (128, 128), jnp.float8_e4m3fn, jnp.bfloat16),
  ((1, 128), (128, 128), jnp.float8_e5m2, jnp.float32),
  ((1, 128), (1, 128), jnp.float8_e4m3fn, jnp.float32),
]


@pytest.mark.parametrize("a_tile,b_tile,a_dtype,out_dtype", FP8_CASES)
def test_fp8_matmul_lowers(a_tile, b_tile, a_dtype, out_dtype):
  fn = lambda *x: fp8_matmul(  # noqa: E731
    *x, a_tile=a_tile, b_tile=b_tile, out_dtype=out_dtype, interpret=False
  )
  args = _fp8_args(SHAPE, a_tile, b_tile, a_dtype)
  assert CUSTOM_CALL in _lowered_text(fn, *args)


def test_ragged_shapes_lower():
  fn = lambda *x: int8_block_matmul(*x, block=32, interpret=False)  # noqa: E731
  assert CUSTOM_CALL in _lowered_text(fn, *_int8_args(RAGGED, 32))
  fn = lambda *x: fp8_matmul(  # noqa: E731
    *x, a_tile=None, b_tile=None, interpret=False
  )
  args = _fp8_args(RAGGED, None, None, jnp.float8_e4m3fn)
  assert CUSTOM_CALL in _lowered_text(fn, *args)


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
  fn = lambda *x: int8_block_matmul(  # noqa: E731
    *x, block=32, interpret=False, config=config
  )
  with pytest.raises(ValueError, match=message):
    _lowered_text(fn, *_int8_args(SHAPE, 32))


def test_k_steps_must_hold_whole_promoted_blocks():
  config = TuningConfig(tile_k=64)
  fn = lambda *x: int8_block_matmul(  # noqa: E731
    *x, block=128, interpret=False, config=config
  )
  with pytest.raises(ValueError, match="multiple of the 128-wide K blocks"):
    _lowered_text(fn, *_int8_args(SHAPE, 128))


def test_default_configs_fit_the_hardware():
  for promoted, n_sub in ((True, 4), (True, 1), (False, 1)):
    for itemsize in (2, 4):
      config = default_config(
        promoted=promoted, n_sub=n_sub, out_itemsize=itemsize
      )
      assert isinstance(config, TuningConfig)
      assert config.max_concurrent_steps >= 3
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
      if kernel.startswith("int8"):
        block = int(kernel.removeprefix("int8_block"))
        fn = lambda *x, b=block, c=config: int8_block_matmul(  # noqa: E731
          *x, block=b, out_dtype=jnp.bfloat16, interpret=False, config=c
        )
        args = _int8_args(SHAPE, block)
      else:
        a_tile, b_tile = (
          (None, None) if kernel == "fp8_tensor" else ((1, 128), (128, 128))
        )
        fn = lambda *x, a=a_tile, b=b_tile, c=config: fp8_matmul(  # noqa: E731
          *x,
          a_tile=a,
          b_tile=b,
          out_dtype=jnp.bfloat16,
          interpret=False,
          config=c,
        )
        args = _fp8_args(SHAPE, a_tile, b_tile, jnp.float8_e4m3fn)
      assert CUSTOM_CALL in _lowered_text(fn, *args), (kernel, config)


QUANTIZE_SHAPE = (1, 256, 512)  # B, M, K: several CTA bands


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_quantize_int8_block_with_transpose_lowers(block, rounding):
  fn = lambda x: mosaic_quantize.quantize_int8_block(  # noqa: E731
    x, block=block, rounding=rounding, seed=3, transpose=True, interpret=False
  )
  x = jnp.zeros(QUANTIZE_SHAPE, jnp.bfloat16)
  assert CUSTOM_CALL in _lowered_text(fn, x)


@pytest.mark.parametrize("tile", [None, (32, 32), (128, 128)])
@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2])
def test_quantize_fp8_lowers(tile, dtype):
  fn = lambda x: mosaic_quantize.quantize_fp8(  # noqa: E731
    x, dtype=dtype, tile=tile, rounding="stochastic", seed=1, interpret=False
  )
  x = jnp.zeros(QUANTIZE_SHAPE, jnp.float32)
  assert CUSTOM_CALL in _lowered_text(fn, x)


@pytest.mark.parametrize(
  "tile", [(1, None), (1, 32), (1, 64), (1, 128), (1, 256), (64, 1), (128, 1)]
)
@pytest.mark.parametrize("x_dtype", [jnp.float32, jnp.bfloat16])
def test_quantize_fp8_rows_and_groups_lower(tile, x_dtype):
  fn = lambda x: mosaic_quantize.quantize_fp8(  # noqa: E731
    x,
    dtype=jnp.float8_e5m2,
    tile=tile,
    rounding="stochastic",
    seed=1,
    interpret=False,
  )
  assert CUSTOM_CALL in _lowered_text(fn, jnp.zeros(QUANTIZE_SHAPE, x_dtype))


@pytest.mark.parametrize("tile", [(1, None), (1, 128), (256, 1)])
def test_ragged_fp8_rows_and_groups_lower(tile):
  fn = lambda x: mosaic_quantize.quantize_fp8(  # noqa: E731
    x, dtype=jnp.float8_e4m3fn, tile=tile, interpret=False
  )
  assert CUSTOM_CALL in _lowered_text(fn, jnp.zeros((2, 70, 45), jnp.float16))


@pytest.mark.parametrize(
  "tile,code_dtype",
  [
    (None, jnp.float8_e4m3fn),
    ((128, 128), jnp.float8_e5m2),
    ((32, 32), jnp.int8),
  ],
)
def test_dequantize_lowers(tile, code_dtype):
  b, m, k = QUANTIZE_SHAPE
  s = (1, 1, 1) if tile is None else (b, m // tile[0], k // tile[0])
  fn = lambda q, s: mosaic_quantize.dequantize(  # noqa: E731
    q, s, tile=tile, out_dtype=jnp.bfloat16, interpret=False
  )
  args = (jnp.zeros(QUANTIZE_SHAPE, code_dtype), jnp.ones(s, jnp.float32))
  assert CUSTOM_CALL in _lowered_text(fn, *args)


def test_ragged_quantize_lowers():
  fn = lambda x: mosaic_quantize.quantize_int8_block(  # noqa: E731
    x, block=32, transpose=True, interpret=False
  )
  assert CUSTOM_CALL in _lowered_text(fn, jnp.zeros((2, 70, 45), jnp.float16))
