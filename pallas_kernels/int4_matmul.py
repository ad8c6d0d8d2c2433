"""The INT4 training GEMMs: int8 tensor-core dots of INT4 codes unpacked in
registers.

Hopper has no INT4 tensor-core instruction, so every GEMM of INT4 training
runs on the INT8 path (``mma``/``wgmma`` s8 x s8 -> s32) with the codes
unpacked after the load: INT4 halves the bytes each operand costs in HBM
and in the saved residuals, not the FLOPs.

A logical operand is ``(B, R, K)`` codes in int8 (INT4 codes in [-8, 7] or
INT8 codes such as ``14 hi + lo`` of a bit split) with per-tensor or S x S
block scales (``a_tile``/``b_tile``: None or (S, S)). It is stored

* K-major ``(B, R, K)``, or **transposed** ``(B, K, R)`` (a backward GEMM
  reads the forward's saved operand as it is: scales then (B, K/S, R/S));
* int8, or **packed** two codes per byte along the stored last axis
  (uint8, :mod:`pallas_kernels.int4`).

:func:`int4_matmul` returns ``out[b, m, n] = sum_k a[b, m, k] b[b, n, k]``
rescaled exactly as :func:`pallas_kernels.matmul_reference.scaled_matmul`
rescales the materialised int8 operands (:func:`int4_matmul_reference`, the
``"xla"`` twin), so the two agree bit for bit: block scales promote every S
elements of K in f32; per-tensor scales sum all of K in int32 (exact while
``|sum| < 2^31``) and rescale once. Built on :mod:`._matmul_core`.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import Array

from pallas_kernels import _matmul_core as core
from pallas_kernels import checks as C
from pallas_kernels import tiles
from pallas_kernels.backend import resolve_interpret
from pallas_kernels.int4 import unpack_int4, unpacked_shape
from pallas_kernels.matmul_reference import scaled_matmul
from pallas_kernels.tiles import TileKind

# The side of S x S block scales the kernel accepts (one chunk of K per S).
INT4_GEMM_BLOCKS = (16, *tiles.BLOCK_SIZES)
# A K chunk shorter than the int8 MMA's K (32) runs as a bf16 MMA with f32
# accumulation instead: exact for integer codes of at most 8 bits (bf16 holds
# them) and chunk sums below 2^24 (16 * 127 * 127 < 2^18).
_INT8_MMA_K = 32


@dataclasses.dataclass(frozen=True)
class Int4MatmulConfig:
  """Output tile per program (raised to the block size), the K chunk of two
  per-tensor operands, and Triton knobs."""

  block_m: int = 64
  block_n: int = 64
  chunk: int = 64
  num_warps: int = 4
  num_stages: int = 2


DEFAULT_CONFIG = Int4MatmulConfig()


@dataclasses.dataclass(frozen=True)
class Int4Operand:
  """How one logical (B, R, K) operand is stored (module docstring)."""

  tile: tiles.Tile = None
  packed: bool = False
  transposed: bool = False

  def logical_shape(self, stored_shape) -> tuple[int, int, int]:
    shape = unpacked_shape(stored_shape) if self.packed else stored_shape
    b, r, c = shape
    return (b, c, r) if self.transposed else (b, r, c)

  def materialized(self, codes: Array, scale: Array) -> tuple[Array, Array]:
    """(int8 codes (B, R, K), scales over ``tile``) in the K-major layout."""
    if self.packed:
      codes = unpack_int4(codes)
    if self.transposed:
      codes, scale = codes.mT, scale.mT
    return codes, scale


def unsupported_reason(a: Int4Operand, b: Int4Operand) -> str | None:
  """Why no kernel here multiplies operands stored as ``a`` and ``b``."""
  for side, op in (("a", a), ("b", b)):
    kind = tiles.kind_of(op.tile)
    if kind is TileKind.BLOCKS and op.tile[0] not in INT4_GEMM_BLOCKS:
      return (
        f"{side}: the INT4 GEMM kernel takes S x S block scales with S in "
        f"{INT4_GEMM_BLOCKS} (one K chunk per block), got {op.tile}"
      )
    if kind not in (TileKind.TENSOR, TileKind.BLOCKS):
      return (
        f"{side}: the INT4 GEMM kernel takes per-tensor or S x S block "
        f"scales, got tile {op.tile!r}"
      )
  sizes = {op.tile[0] for op in (a, b) if op.tile is not None}
  if len(sizes) > 1:
    return f"the operands' block sizes differ: {a.tile} and {b.tile}"
  return None


def check_int4_operands(
  a_q, a_s, a: Int4Operand, b_q, b_s, b: Int4Operand, out_dtype
) -> tuple[int, int, int, int]:
  """(B, M, N, K) of the product; ValueError naming the first argument
  that breaks the contract (dtype, shape, scales' shape, out_dtype)."""
  for name, q, op in (("a_q", a_q, a), ("b_q", b_q, b)):
    want = np.dtype(np.uint8 if op.packed else np.int8)
    C.check_array(name, q, (want,))
  (ba, m, k), (bb, n, kb) = (
    a.logical_shape(a_q.shape),
    b.logical_shape(b_q.shape),
  )
  if ba != bb or k != kb:
    raise ValueError(
      f"a_q has shape {a_q.shape} ({a}) and b_q has shape {b_q.shape} "
      f"({b}); their logical shapes (B, M, K) = {(ba, m, k)} and "
      f"(B, N, K) = {(bb, n, kb)} need the same B and K"
    )
  for name, s, op, rows in (("a_s", a_s, a, m), ("b_s", b_s, b, n)):
    want = tiles.scale_shape((ba, rows, k), op.tile)
    if op.transposed:
      want = (*want[:-2], want[-1], want[-2])
    C.check_scales(name, s, want, f"tile {op.tile!r} ({op})")
  C.check_out_dtype(out_dtype)
  return ba, m, n, k


def _plan(bmnk, a: Int4Operand, b: Int4Operand, out_dtype, config):
  side = max((op.tile[0] for op in (a, b) if op.tile is not None), default=0)
  block_m, block_n = max(config.block_m, side), max(config.block_n, side)
  short_chunk = (side or config.chunk) < _INT8_MMA_K
  return core.MatmulPlan(
    bmnk=bmnk,
    a_scales=tiles.kind_of(a.tile),
    b_scales=tiles.kind_of(b.tile),
    chunk=side or config.chunk,
    block_m=block_m,
    block_n=block_n,
    accumulator=np.dtype(np.float32 if short_chunk else np.int32),
    upcast=np.dtype(jnp.bfloat16) if short_chunk else None,
    out_dtype=np.dtype(out_dtype),
    num_warps=core.warps_for(block_m, block_n, config.num_warps),
    num_stages=config.num_stages,
    a_packed=a.packed,
    b_packed=b.packed,
    a_transposed=a.transposed,
    b_transposed=b.transposed,
  )


def int4_matmul(
  a_q: Array,
  a_s: Array,
  b_q: Array,
  b_s: Array,
  *,
  a: Int4Operand = Int4Operand(),
  b: Int4Operand = Int4Operand(),
  out_dtype=jnp.float32,
  interpret: bool | None = None,
  config: Int4MatmulConfig = DEFAULT_CONFIG,
) -> Array:
  """``a . b^T`` (B, M, N) of INT4/INT8 codes stored as ``a`` and ``b`` say
  (module docstring), in ``out_dtype``.

  Raises:
    ValueError: codes not uint8 (packed) or int8, scales of the wrong shape,
      logical shapes that do not contract.
    NotImplementedError: scale tiles the kernel has no path for
      (:func:`unsupported_reason`).
  """
  bmnk = check_int4_operands(a_q, a_s, a, b_q, b_s, b, out_dtype)
  reason = unsupported_reason(a, b)
  if reason:
    raise NotImplementedError(reason)
  (out,) = core.run(
    a_q,
    a_s,
    b_q,
    b_s,
    None,
    plan=_plan(bmnk, a, b, out_dtype, config),
    name="lpj_int4_matmul",
    interpret=resolve_interpret(interpret),
  )
  return out


def int4_matmul_reference(
  a_q, a_s, b_q, b_s, *, a=Int4Operand(), b=Int4Operand(), out_dtype=jnp.float32
) -> Array:
  """Twin of :func:`int4_matmul` in plain jnp: materialise both operands
  (unpack, transpose) and :func:`scaled_matmul` them. Takes any per-tensor
  or S x S tiles (S x S blocks of 16 too)."""
  check_int4_operands(a_q, a_s, a, b_q, b_s, b, out_dtype)
  a_codes, a_scale = a.materialized(a_q, a_s)
  b_codes, b_scale = b.materialized(b_q, b_s)
  return scaled_matmul(
    a_codes,
    a_scale,
    b_codes,
    b_scale,
    a_tile=a.tile,
    b_tile=b.tile,
    out_dtype=np.dtype(out_dtype),
  )
