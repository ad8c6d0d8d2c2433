"""Scaled FP8 GEMM: E4M3 x E4M3, E5M2 x E4M3 and E4M3 x E5M2, f32 accumulation.

For K-major FP8 operands ``a_q`` (B, M, K) and ``b_q`` (B, N, K) with f32
scales shaped like their tiles' scale grids:

* scales constant along K (per-tensor x per-tensor, per-row x per-row):
  ``out = (sum_k a_q b_q) * a_s[m] * b_s[n]``, one f32 dot accumulated over
  K chunks and scaled once in the epilogue;
* K groups (DeepSeek-V3): ``(1, G) x (G, G)`` (forward and dgrad) and
  ``(1, G) x (1, G)`` (wgrad), G in {32, 64, 128}: every G columns of K are
  promoted into the f32 accumulator as
  ``acc += float(a_c . b_c) * (a_s[m, c] * b_s[n or n // G, c])``.

Every product of two FP8 values is exact in f32, so results equal the
``"xla"`` implementation bit for bit whenever the f32 sums are exact (small
integers, power-of-two scales); otherwise they differ only by f32 summation
order. Any other pair of tiles raises ``NotImplementedError``.

Mixed E5M2/E4M3 pairs: the Triton backend rejects a dot of two different FP8
types, so both operands are widened to bf16 inside the kernel. That is exact
(both FP8 grids are subsets of bf16, and bf16 products accumulate in f32)
but runs the MMA at the bf16 rate (half of FP8 on Hopper) and doubles the
operand bytes in registers; the census reports the bf16 dot.
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

GROUPS = tiles.BLOCK_SIZES
K = tiles.TileKind
# Tile-kind pairs (a, b) with a kernel: scales constant along K, or promoted
# every G elements of K.
_CONSTANT = ((K.TENSOR, K.TENSOR), (K.ROWS, K.ROWS))
_GROUPED = ((K.ROW_GROUPS, K.BLOCKS), (K.ROW_GROUPS, K.ROW_GROUPS))
E4M3, E5M2 = np.dtype(jnp.float8_e4m3fn), np.dtype(jnp.float8_e5m2)
# (a dtype, b dtype) pairs: an E5M2 gradient is a (dgrad) or, for the
# weight gradient of a stored (K, N) weight, b.
DTYPE_PAIRS = ((E4M3, E4M3), (E5M2, E4M3), (E4M3, E5M2))


@dataclasses.dataclass(frozen=True)
class Fp8MatmulConfig:
  """Output tile per program, K chunk for K-constant scales, Triton knobs."""

  block_m: int = 64
  block_n: int = 64
  block_k: int = 128
  num_warps: int = 4
  num_stages: int = 2


DEFAULT_CONFIG = Fp8MatmulConfig()


def _kind(tile) -> tiles.TileKind | None:
  try:
    return tiles.kind_of(tile)
  except ValueError:
    return None


def unsupported_reason(a_tile, b_tile, a_dtype, b_dtype) -> str | None:
  """Why :func:`fp8_matmul` has no kernel for these tiles/dtypes (or None)."""
  pair = (np.dtype(a_dtype), np.dtype(b_dtype))
  if pair not in DTYPE_PAIRS:
    return (
      f"dtypes {pair[0]} x {pair[1]} are not supported; supported: "
      "float8_e4m3fn x float8_e4m3fn, float8_e5m2 x float8_e4m3fn and "
      "float8_e4m3fn x float8_e5m2"
    )
  kinds = (_kind(a_tile), _kind(b_tile))
  if kinds in _CONSTANT:
    return None
  if kinds in _GROUPED:
    group = tiles.size_of(a_tile)
    if group == tiles.size_of(b_tile) and group in GROUPS:
      return None
  return (
    f"tiles a_tile={a_tile!r} x b_tile={b_tile!r} have no FP8 kernel; "
    "supported: None x None, (1, None) x (1, None), (1, G) x (G, G) and "
    f"(1, G) x (1, G) with G in {GROUPS}"
  )


def _plan(a_q, a_s, b_q, b_s, a_tile, b_tile, out_dtype, config):
  b, m, n, k = C.check_operands(a_q, b_q, C.FP8_DTYPES)
  reason = unsupported_reason(a_tile, b_tile, a_q.dtype, b_q.dtype)
  if reason:
    raise NotImplementedError(reason)
  C.check_operand_scales(a_q, a_s, a_tile, b_q, b_s, b_tile)
  out_dtype = C.check_out_dtype(out_dtype)
  ka, kb = tiles.kind_of(a_tile), tiles.kind_of(b_tile)
  chunk = tiles.size_of(a_tile) or config.block_k
  mixed = a_q.dtype != b_q.dtype
  block_m = config.block_m
  block_n = max(config.block_n, chunk if kb is K.BLOCKS else 1)
  return core.MatmulPlan(
    bmnk=(b, m, n, k),
    a_scales=ka,
    b_scales=kb,
    chunk=chunk,
    block_m=block_m,
    block_n=block_n,
    accumulator=np.dtype(np.float32),
    upcast=np.dtype(jnp.bfloat16) if mixed else None,
    out_dtype=out_dtype,
    num_warps=core.warps_for(block_m, block_n, config.num_warps),
    num_stages=config.num_stages,
  )


def fp8_matmul(
  a_q: Array,
  a_s: Array,
  b_q: Array,
  b_s: Array,
  *,
  a_tile,
  b_tile,
  out_dtype=jnp.float32,
  interpret: bool | None = None,
  config: Fp8MatmulConfig = DEFAULT_CONFIG,
) -> Array:
  """``a . b^T`` of scaled FP8 operands in ``out_dtype`` (module docstring)."""
  plan = _plan(a_q, a_s, b_q, b_s, a_tile, b_tile, out_dtype, config)
  (out,) = core.run(
    a_q,
    a_s,
    b_q,
    b_s,
    None,
    plan=plan,
    name="lpj_fp8_matmul",
    interpret=resolve_interpret(interpret),
  )
  return out


def fp8_matmul_reference(
  a_q, a_s, b_q, b_s, *, a_tile, b_tile, out_dtype=jnp.float32
) -> Array:
  """Twin of :func:`fp8_matmul` in plain jnp."""
  plan = _plan(a_q, a_s, b_q, b_s, a_tile, b_tile, out_dtype, DEFAULT_CONFIG)
  return scaled_matmul(
    a_q,
    a_s,
    b_q,
    b_s,
    a_tile=a_tile,
    b_tile=b_tile,
    out_dtype=plan.out_dtype,
    upcast=plan.upcast,
  )
