"""The plain-jnp block-scaled GEMM: the ``"xla"`` implementation and the twin
every GEMM kernel is tested against.

For K-major codes ``a_q`` (B, M, K) and ``b_q`` (B, N, K) with scales shaped
like their tiles' scale grids (:func:`pallas_kernels.tiles.scale_shape`), and
``c`` the finer contraction tile of the two when it is shorter than K:

    out[b, m, n] = sum_j P_j[b, m, n] * (sa_j[b, m] * sb_j[b, n])
    P_j = sum_{k in chunk j of c} a_q[b, m, k] * b_q[b, n, k]

``P_j`` is an int8 x int8 -> int32 dot (exact) or an fp8 x fp8 -> f32 dot;
the rescale and the sum over chunks run in f32 in exactly this order (a
``lax.scan`` from zero, never a (K/c, M, N) intermediate). The scale
product comes first: where a kernel's output tile lies inside one scale
block of both operands it is one scalar per chunk, and the promotion is one
multiply and one add per element instead of two multiplies and an add. When both scales
span all of K (per-tensor, per-row), or one chunk covers K, there is one dot
and the rescale is an outer product. Tiles divide one another.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from pallas_kernels import tiles

# (B, M, K) x (B, N, K) -> (B, M, N)
_NT_BATCHED = (((2,), (2,)), ((0,), (0,)))


def _row_scales(scale: Array, tile: tiles.Tile, rows: int) -> Array:
  """Scales broadcast along rows: (B or 1, rows or 1, number of K tiles)."""
  if tiles.kind_of(tile) in (
    tiles.TileKind.BLOCKS,
    tiles.TileKind.COLUMN_GROUPS,
  ):
    return jnp.repeat(scale, tile[0], axis=1)[:, :rows, :]
  return scale


def chunk_scales(scale: Array, tile: tiles.Tile, rows: int, chunk, n: int):
  """The scale of every row in each of ``n`` K chunks: (n, B or 1, rows).

  ``chunk``: K elements per chunk (None: one chunk over all of K).
  """
  scale = _row_scales(scale.astype(jnp.float32), tile, rows)
  t = tiles.contraction_tile(tile)
  if t is None or chunk is None or scale.shape[2] == 1:
    cols = jnp.zeros((n,), jnp.int32)
  else:
    cols = (jnp.arange(n, dtype=jnp.int32) * chunk) // t
  return jnp.moveaxis(jnp.take(scale, cols, axis=2), 2, 0)


def promotion_chunk(a_tile: tiles.Tile, b_tile: tiles.Tile, k: int):
  """K elements per rescaled partial sum: the finer contraction tile, or
  None when both scales span K or one chunk covers it."""
  found = [tiles.contraction_tile(t) for t in (a_tile, b_tile)]
  found = [t for t in found if t is not None and t < k]
  return min(found) if found else None


def _chunks(q: Array, chunk: int, n: int) -> Array:
  """(B, R, K) -> (n, B, R, chunk), zero-padding the K tail."""
  b, r, k = q.shape
  if n * chunk != k:
    q = jnp.pad(q, ((0, 0), (0, 0), (0, n * chunk - k)))
  return jnp.moveaxis(q.reshape(b, r, n, chunk), 2, 0)


@functools.partial(
  jax.jit, static_argnames=("a_tile", "b_tile", "out_dtype", "upcast")
)
def scaled_matmul(
  a_q, a_s, b_q, b_s, *, a_tile, b_tile, out_dtype, upcast=None
) -> Array:
  """``a . b^T`` of scaled 8-bit codes (module docstring) in ``out_dtype``.

  ``upcast``: a dtype both operands are widened to before the dot (exact;
  the portable FP8 kernel's E5M2 x E4M3), or None.
  """
  is_int8 = np.dtype(a_q.dtype) == np.dtype(np.int8)
  accumulator = jnp.int32 if is_int8 else jnp.float32
  (_, m, k), n_rows = a_q.shape, b_q.shape[1]

  def rescaled_dot(qa, qb, sa_j, sb_j):
    if upcast is not None:
      qa, qb = qa.astype(upcast), qb.astype(upcast)
    p = lax.dot_general(qa, qb, _NT_BATCHED, preferred_element_type=accumulator)
    return p.astype(jnp.float32) * (sa_j[:, :, None] * sb_j[:, None, :])

  chunk = promotion_chunk(a_tile, b_tile, k)
  n = 1 if chunk is None else -(-k // chunk)
  sa = chunk_scales(a_s, a_tile, m, chunk, n)
  sb = chunk_scales(b_s, b_tile, n_rows, chunk, n)
  if chunk is None:
    return rescaled_dot(a_q, b_q, sa[0], sb[0]).astype(out_dtype)

  def step(acc, x):
    return acc + rescaled_dot(*x), None

  batch = max(a_q.shape[0], b_q.shape[0])
  init = jnp.zeros((batch, m, n_rows), jnp.float32)
  xs = (_chunks(a_q, chunk, n), _chunks(b_q, chunk, n), sa, sb)
  return lax.scan(step, init, xs)[0].astype(out_dtype)
