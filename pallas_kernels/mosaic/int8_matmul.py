"""Block-scaled INT8 GEMM on Hopper (Mosaic GPU): the ``"mosaic"`` twin.

Same contract as :func:`pallas_kernels.int8_matmul.int8_block_matmul`. For
codes ``a_q`` (B, M, K) and ``b_q`` (B, N, K) quantized in square
``block x block`` tiles with scales ``a_s`` (B, cdiv(M, block),
cdiv(K, block)) and ``b_s`` (B, cdiv(N, block), cdiv(K, block)):

    out[b, m, n] = sum_j P_j * (a_s[b, m // block, j] * b_s[b, n // block, j])
    P_j = sum_{k in K block j} a_q[b, m, k] * b_q[b, n, k]   (exact int32)

``P_j`` is an s8 x s8 -> s32 ``wgmma``; each K block's partial sum is
promoted into an fp32 carry (``_gemm``). With ``block=32`` (Jetfire) a
128-wide pipeline step holds four K blocks in 32-byte swizzled tiles and
promotes four times; with ``block=128`` one ``wgmma`` per step covers the
block and promotes once, a quarter of the promotion work.

With ``out_block`` (the requantizing epilogue of Jetfire's forward and
dgrad) each compute warpgroup stages its fp32 tile in SMEM and quantizes it
in ``out_block x out_block`` blocks with the logic of the Mosaic quantize
kernel (absmax, exact scale and reciprocal, RTN or SR hashed at the (B, M, N)
output coordinates), writing int8 codes by TMA and block scales directly:
``(q, s)`` exactly as ``quantize_int8_block`` of the fp32 output would.
``out_block`` must divide the warpgroup tile (32 or 64 with the default
tiles); this variant lowers with Lane semantics (the exact reciprocal
bitcasts scalars).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import checks as C
from pallas_kernels import tiles
from pallas_kernels.mosaic._config import TuningConfig
from pallas_kernels.mosaic._gemm import scaled_matmul
from pallas_kernels.mosaic.quantize import BandPlan
from pallas_kernels.numerics import NumberGrid

OUT_BLOCKS = tiles.BLOCK_SIZES[:2]  # must divide the 64 x 128 warpgroup tile


def check_int8_operands(a_q, a_s, b_q, b_s, block) -> None:
  """Raises ValueError naming the first argument that breaks the contract."""
  tiles.check_block(block)
  C.check_operands(a_q, b_q, (np.dtype(np.int8),))
  C.check_operand_scales(a_q, a_s, (block, block), b_q, b_s, (block, block))


@functools.partial(
  jax.jit,
  static_argnames=(
    "block",
    "out_dtype",
    "out_block",
    "out_rounding",
    "interpret",
    "config",
  ),
)
def int8_block_matmul(
  a_q: jax.Array,
  a_s: jax.Array,
  b_q: jax.Array,
  b_s: jax.Array,
  *,
  block: int,
  out_dtype=jnp.float32,
  out_block: int | None = None,
  out_rounding: str = "nearest",
  seed=None,
  interpret=None,
  config: TuningConfig | None = None,
):
  """Block-scaled INT8 GEMM (see the module docstring).

  Args:
    a_q, a_s, b_q, b_s: codes and scales (the contract above).
    block: 32, 64 or 128: the quantization block and the K block.
    out_dtype: float32, bfloat16 or float16.
    out_block, out_rounding, seed: the INT8-out epilogue of the contract
      (``out_block`` in ``OUT_BLOCKS``; ``seed`` for stochastic rounding).
    interpret: None (interpret without a GPU), a bool, or a
      ``plgpu.InterpretGPUParams``.
    config: tiles (default: ``default_config``).

  Returns:
    (B, M, N) in ``out_dtype``, or with ``out_block`` ``(q, s)``: int8
    (B, M, N) and f32 (B, cdiv(M, out_block), cdiv(N, out_block)).

  Raises:
    NotImplementedError: for ``out_block`` 128 (wider than a warpgroup's
      64-row tile).
  """
  check_int8_operands(a_q, a_s, b_q, b_s, block)
  out_dtype = C.check_out_dtype(out_dtype)
  requantize = _requantize_plan(a_q, b_q, out_block, out_rounding, seed)
  if requantize is not None and requantize.stochastic:
    seed = C.seed_array(seed, out_rounding)
  tile = (block, block)
  return scaled_matmul(
    a_q,
    a_s,
    tile,
    b_q,
    b_s,
    tile,
    out_dtype=out_dtype,
    interpret=interpret,
    config=config,
    name=f"lpj_mosaic_int8_block{block}_matmul"
    + ("" if out_block is None else f"_int8_out{out_block}"),
    requantize=requantize,
    seed=seed,
  )


def _requantize_plan(a_q, b_q, out_block, out_rounding, seed):
  """The fused S x S INT8 plan of the output, or None (no ``out_block``)."""
  if out_block is None:
    return None
  if out_block not in tiles.BLOCK_SIZES:
    raise ValueError(
      f"out_block must be None or one of {tiles.BLOCK_SIZES}, got {out_block!r}"
    )
  if out_block not in OUT_BLOCKS:
    raise NotImplementedError(
      f"int8_block_matmul (mosaic): out_block={out_block} is wider than the "
      "64-row tile of a compute warpgroup, which quantizes its own tile; "
      f"supported: {OUT_BLOCKS}"
    )
  C.seed_array(seed, out_rounding)  # ValueError for a bad rounding/seed
  batch, m, _ = a_q.shape
  return BandPlan(
    mode="fused",
    shape=(batch, m, b_q.shape[1]),
    block=out_block,
    cols=out_block,
    grid=NumberGrid.int8(),
    stochastic=out_rounding == "stochastic",
  )
