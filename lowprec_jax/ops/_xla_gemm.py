"""The ``"xla"`` implementation: the jnp quantizers and real 8-bit dots.

For canonical operands ``a`` (B, M, K) and ``b`` (B, N, K), with each
operand's scales constant over contraction chunks of ``c`` elements:

    out[b, m, n] = sum_j  sa[b, m, j] * sb[b, n, j]
                          * sum_{k in chunk j} qa[b, m, k] * qb[b, n, k]

The inner sum is an int8 x int8 -> int32 dot (exact) or an fp8 x fp8 -> f32
dot; the outer sum rescales in fp32 and accumulates in fp32, one chunk at a
time (a ``lax.scan``, never a (K/c, M, N) intermediate). When both operands'
scales span all of K (per-tensor, per-row) there is one dot and the rescale
is an outer product in the epilogue. ``c`` is the smaller contraction tile of
the two operands; tiles divide one another (checked by ``GemmQuant``).
"""

import dataclasses

import jax.numpy as jnp
from jax import Array, lax

from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.formats._quantize import quantize
from lowprec_jax.ops._config import GemmQuant, OperandQuant, contraction_tile
from lowprec_jax.ops._gemm_implementation import GemmImplementation
from pallas_kernels.tiles import TileKind, kind_of

# (B, M, K) x (B, N, K) -> (B, M, N)
_NT_BATCHED = (((2,), (2,)), ((0,), (0,)))


def _row_scales(qt: QTensor) -> Array:
  """Scales broadcast along rows: (B or 1, M or 1, number of K tiles)."""
  if kind_of(qt.format.tile) not in (TileKind.BLOCKS, TileKind.COLUMN_GROUPS):
    return qt.scale
  rows = qt.shape[1]
  return jnp.repeat(qt.scale, qt.format.tile[0], axis=1)[:, :rows, :]


def _chunk_scales(row_scales: Array, tile: int | None, chunk: int, n: int):
  """Scale column of every K chunk: (n, B, rows)."""
  if tile is None:
    cols = jnp.zeros((n,), jnp.int32)
  else:
    cols = (jnp.arange(n) * chunk) // tile
  return jnp.moveaxis(jnp.take(row_scales, cols, axis=2), 2, 0)


def _chunks(q: Array, chunk: int, n: int) -> Array:
  """(B, R, K) -> (n, B, R, chunk), zero-padding the K tail."""
  b, r, k = q.shape
  if n * chunk != k:
    q = jnp.pad(q, ((0, 0), (0, 0), (0, n * chunk - k)))
  return jnp.moveaxis(q.reshape(b, r, n, chunk), 2, 0)


@dataclasses.dataclass(frozen=True)
class XlaGemm(GemmImplementation):
  """Block-scaled 8-bit GEMM with ``lax.dot_general`` on int8/fp8 operands.

  Quantizes and dequantizes with the jnp reference in ``lowprec_jax.formats``.
  """

  name: str = "xla"

  def gemm_unsupported_reason(self, gemm: GemmQuant) -> str | None:
    del gemm  # every valid GemmQuant is supported
    return None

  def quantizer_for(self, fmt) -> str:
    return self.name

  def dequantizer_for(self, fmt) -> str:
    return self.name

  def quantize(self, x: Array, want: OperandQuant, seed) -> QTensor:
    return quantize(x, want.format, rounding=want.rounding, seed=seed)

  def dequantize(self, qt: QTensor, dtype) -> Array:
    return qt.dequantize(dtype)

  def matmul(self, a: QTensor, b: QTensor, out_dtype) -> Array:
    acc_dtype = jnp.int32 if a.format.grid.is_int8 else jnp.float32
    k = a.shape[2]
    ta, tb = contraction_tile(a.format), contraction_tile(b.format)
    tiles = [t for t in (ta, tb) if t is not None and t < k]
    sa, sb = _row_scales(a), _row_scales(b)

    def rescaled_dot(qa, qb, sa_j, sb_j):
      p = lax.dot_general(qa, qb, _NT_BATCHED, preferred_element_type=acc_dtype)
      return p.astype(jnp.float32) * sa_j[:, :, None] * sb_j[:, None, :]

    if not tiles:
      out = rescaled_dot(a.qvalue, b.qvalue, sa[:, :, 0], sb[:, :, 0])
      return out.astype(out_dtype)

    chunk = min(tiles)
    n = -(-k // chunk)
    xs = (
      _chunks(a.qvalue, chunk, n),
      _chunks(b.qvalue, chunk, n),
      _chunk_scales(sa, ta, chunk, n),
      _chunk_scales(sb, tb, chunk, n),
    )

    def step(acc, x):
      return acc + rescaled_dot(*x), None

    batch = max(a.shape[0], b.shape[0])
    init = jnp.zeros((batch, a.shape[1], b.shape[1]), jnp.float32)
    out, _ = lax.scan(step, init, xs)
    return out.astype(out_dtype)


XLA = XlaGemm()
