"""Block-scaled INT8 GEMM (Jetfire): int8 x int8 -> int32 per K block.

For K-major INT8 operands quantized in S x S blocks (``S = block``),
``a_q`` (B, M, K) with ``a_s`` (B, cdiv(M, S), cdiv(K, S)) and ``b_q``
(B, N, K) with ``b_s`` (B, cdiv(N, S), cdiv(K, S)):

    out[b, m, n] = sum_j  (float(sum_{k in block j} a_q[b,m,k] b_q[b,n,k])
                           * a_s[b, m // S, j]) * b_s[b, n // S, j]

The inner sum is exact in int32 (|sum| <= 127^2 * 128 < 2^21); the outer sum
is accumulated in f32 block by block, in the order and association of the
``"xla"`` implementation (``lowprec_jax/ops/_xla_gemm.py``), so the two agree
bit for bit. The epilogue either casts to ``out_dtype`` or, with
``out_block``, requantizes the f32 result to INT8 ``out_block`` squares (RTN,
or SR with ``seed`` hashed at the (B, M, N) output coordinates), exactly as
``quantize_int8_block`` would, and returns ``(q, s)``.

Jetfire's three GEMMs are the named helpers :func:`jetfire_forward` (INT8
out, RTN), :func:`jetfire_dgrad` (INT8 out, SR) and :func:`jetfire_wgrad`
(f32 out). Runs as a Triton-backend ``pallas_call`` on GPU and through the
Pallas interpreter on CPU.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import Array

from pallas_kernels import _matmul_core as core
from pallas_kernels import checks as C
from pallas_kernels import tiles
from pallas_kernels.backend import resolve_interpret
from pallas_kernels.matmul_reference import scaled_matmul
from pallas_kernels.numerics import NumberGrid
from pallas_kernels.quantize_reference import quantize_array
from pallas_kernels.tiles import TileKind

JETFIRE_OUT_BLOCK = 32


@dataclasses.dataclass(frozen=True)
class Int8MatmulConfig:
  """Output tile per program (raised to the block sizes) and Triton knobs."""

  block_m: int = 64
  block_n: int = 64
  num_warps: int = 4
  num_stages: int = 2


DEFAULT_CONFIG = Int8MatmulConfig()


def _check(a_q, a_s, b_q, b_s, block, out_block, out_dtype) -> None:
  b, m, n, k = C.check_operands(a_q, b_q, (np.dtype(np.int8),))
  tiles.check_block(block)
  if out_block not in (None, *tiles.BLOCK_SIZES):
    raise ValueError(
      f"out_block must be None or one of {tiles.BLOCK_SIZES}, got {out_block!r}"
    )
  C.check_operand_scales(a_q, a_s, (block, block), b_q, b_s, (block, block))
  if out_block is None:
    C.check_out_dtype(out_dtype)


def _plan(a_q, b_q, block, out_dtype, out_block, stochastic, config):
  side = max(block, out_block or 1)
  block_m, block_n = max(config.block_m, side), max(config.block_n, side)
  return core.MatmulPlan(
    bmnk=(*a_q.shape[:2], b_q.shape[1], a_q.shape[2]),
    a_scales=TileKind.BLOCKS,
    b_scales=TileKind.BLOCKS,
    chunk=block,
    block_m=block_m,
    block_n=block_n,
    accumulator=np.dtype(np.int32),
    upcast=None,
    out_dtype=np.dtype(out_dtype),
    out_block=out_block,
    stochastic=stochastic,
    num_warps=core.warps_for(block_m, block_n, config.num_warps),
    num_stages=config.num_stages,
  )


def int8_block_matmul(
  a_q: Array,
  a_s: Array,
  b_q: Array,
  b_s: Array,
  *,
  block: int,
  out_dtype=jnp.float32,
  out_block: int | None = None,
  out_rounding: str = "nearest",
  seed=None,
  interpret: bool | None = None,
  config: Int8MatmulConfig = DEFAULT_CONFIG,
):
  """``a . b^T`` of block-quantized INT8 operands (see the module docstring).

  Returns the (B, M, N) product in ``out_dtype``, or with ``out_block`` its
  INT8 quantization ``(q, s)``; ``seed`` is needed for
  ``out_rounding="stochastic"``.
  """
  _check(a_q, a_s, b_q, b_s, block, out_block, out_dtype)
  seed = C.seed_array(seed, out_rounding) if out_block else None
  plan = _plan(a_q, b_q, block, out_dtype, out_block, seed is not None, config)
  outs = core.run(
    a_q,
    a_s,
    b_q,
    b_s,
    seed,
    plan=plan,
    name="lpj_int8_block_matmul",
    interpret=resolve_interpret(interpret),
  )
  return outs[0] if out_block is None else outs


def int8_block_matmul_reference(
  a_q,
  a_s,
  b_q,
  b_s,
  *,
  block: int,
  out_dtype=jnp.float32,
  out_block: int | None = None,
  out_rounding: str = "nearest",
  seed=None,
):
  """Twin of :func:`int8_block_matmul` in plain jnp (a scan over K blocks)."""
  _check(a_q, a_s, b_q, b_s, block, out_block, out_dtype)
  seed = C.seed_array(seed, out_rounding) if out_block else None
  tile = (block, block)
  out = scaled_matmul(
    a_q,
    a_s,
    b_q,
    b_s,
    a_tile=tile,
    b_tile=tile,
    out_dtype=np.dtype(jnp.float32 if out_block else out_dtype),
  )
  if out_block is None:
    return out
  grid, out_tile = NumberGrid.int8(), (out_block, out_block)
  return quantize_array(out, seed, grid=grid, tile=out_tile)


def jetfire_forward(a_q, a_s, b_q, b_s, *, block: int, interpret=None):
  """Forward GEMM: INT8 32 x 32 blocks out, round to nearest."""
  return int8_block_matmul(
    a_q, a_s, b_q, b_s, block=block, out_block=JETFIRE_OUT_BLOCK,
    interpret=interpret,
  )  # fmt: skip


def jetfire_dgrad(a_q, a_s, b_q, b_s, *, block: int, seed, interpret=None):
  """Activation-gradient GEMM: INT8 32 x 32 blocks out, stochastic rounding."""
  return int8_block_matmul(
    a_q, a_s, b_q, b_s, block=block, out_block=JETFIRE_OUT_BLOCK,
    out_rounding="stochastic", seed=seed, interpret=interpret,
  )  # fmt: skip


def jetfire_wgrad(a_q, a_s, b_q, b_s, *, block: int, interpret=None):
  """Weight-gradient GEMM: f32 out."""
  return int8_block_matmul(
    a_q, a_s, b_q, b_s, block=block, out_dtype=jnp.float32,
    interpret=interpret,
  )  # fmt: skip
