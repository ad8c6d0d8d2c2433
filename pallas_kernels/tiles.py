"""Scale tiles: the one vocabulary of which elements share a scale.

A tile ``(rows, cols)`` covers the last two axes of a tensor (the last axis
alone for 1-D tensors); ``None`` entries span the whole axis; a ``None``
tile spans the whole tensor. Every layer (formats, ops, portable and Mosaic
kernels) names tiles with :class:`TileKind`:

==============  =============  ==========================================
kind            tile           scales of a (..., R, C) value
==============  =============  ==========================================
TENSOR          ``None``       one: shape (1, ..., 1)
ROWS            ``(1, None)``  one per row: (..., R, 1)
COLUMNS         ``(None, 1)``  one per column: (..., 1, C)
ROW_GROUPS      ``(1, G)``     G consecutive elements of a row: (..., R, C/G)
COLUMN_GROUPS   ``(G, 1)``     G consecutive elements of a column
BLOCKS          ``(S, S)``     square blocks: (..., R/S, C/S)
==============  =============  ==========================================

(divisions round up: a ragged tail forms a partial tile that is padded with
zeros for the absmax and never dropped). G and S are powers of two. Inside a
GEMM operands are ``(batch, rows, contraction)``, so ``(1, G)`` groups along
the contraction and the *contraction tile* is the tile's column extent.

The jnp helpers below (absmax per tile, scale expansion, the stochastic-
rounding counters) serve the plain-jnp quantizer of any rank.
"""

import enum
import math

import jax.numpy as jnp
from jax import Array

from pallas_kernels.numerics import finite_absmax

Tile = tuple[int | None, int | None] | None

# Square-block sides and K groups of the block-scaled GEMM kernels (INT8
# blocks; FP8 groups promoted every G elements of K).
BLOCK_SIZES = (32, 64, 128)
# Group and block sizes an FP8 or INT4 format may use.
GROUP_SIZES = (16, 32, 64, 128, 256)


def check_block(block, name: str = "block") -> None:
  """ValueError unless ``block`` is one of :data:`BLOCK_SIZES`."""
  if block not in BLOCK_SIZES or isinstance(block, bool):
    raise ValueError(f"{name} must be one of {BLOCK_SIZES}, got {block!r}")


class TileKind(enum.Enum):
  """The kinds of scale tile (see the module docstring)."""

  TENSOR = "tensor"
  ROWS = "rows"
  COLUMNS = "columns"
  ROW_GROUPS = "row_groups"
  COLUMN_GROUPS = "column_groups"
  BLOCKS = "blocks"


def _is_power_of_two(n) -> bool:
  return isinstance(n, int) and not isinstance(n, bool) and n & (n - 1) == 0


def kind_of(tile: Tile) -> TileKind:
  """The kind of ``tile``; ValueError for anything that is not a tile."""
  if tile is None:
    return TileKind.TENSOR
  if tile == (1, None):
    return TileKind.ROWS
  if tile == (None, 1):
    return TileKind.COLUMNS
  if isinstance(tile, tuple) and len(tile) == 2:
    rows, cols = tile
    if rows == 1 and _is_power_of_two(cols) and cols > 1:
      return TileKind.ROW_GROUPS
    if cols == 1 and _is_power_of_two(rows) and rows > 1:
      return TileKind.COLUMN_GROUPS
    if rows == cols and _is_power_of_two(rows) and rows > 1:
      return TileKind.BLOCKS
  raise ValueError(
    f"tile must be None, (1, None), (None, 1), (1, G), (G, 1) or (S, S) with "
    f"G, S powers of two > 1, got {tile!r}"
  )


def size_of(tile: Tile) -> int | None:
  """G of a group tile, S of a block tile, None for whole-axis tiles."""
  kind = kind_of(tile)
  if kind in (TileKind.ROW_GROUPS, TileKind.BLOCKS):
    return tile[1]
  if kind is TileKind.COLUMN_GROUPS:
    return tile[0]
  return None


def transpose(tile: Tile) -> Tile:
  """The tile of the same scales after swapping the last two axes."""
  return None if tile is None else (tile[1], tile[0])


def contraction_tile(tile: Tile) -> int | None:
  """Contraction elements sharing a scale in a (B, rows, K) operand (None:
  all of K)."""
  return None if tile is None else tile[1]


def name(tile: Tile) -> str:
  """Short name: 'tensor', 'row', 'col', or 'RxC' (e.g. '1x128')."""
  kind = kind_of(tile)
  if kind is TileKind.TENSOR:
    return "tensor"
  if kind is TileKind.ROWS:
    return "row"
  if kind is TileKind.COLUMNS:
    return "col"
  return f"{tile[0]}x{tile[1]}"


def _matrix_tile(shape, tile: Tile) -> tuple[int, int] | None:
  """The concrete (tr, tc) on the last two axes, or None (per-tensor)."""
  if tile is None or len(shape) == 0:
    return None
  rows = shape[-2] if len(shape) >= 2 else 1
  tr, tc = tile
  tr = rows if tr is None or len(shape) < 2 else tr
  tc = shape[-1] if tc is None else tc
  return max(tr, 1), max(tc, 1)


def scale_shape(shape, tile: Tile) -> tuple[int, ...]:
  """Shape of the scale grid of a value of ``shape`` (the value's rank)."""
  shape = tuple(shape)
  mt = _matrix_tile(shape, tile)
  if mt is None:
    return (1,) * len(shape)
  tr, tc = mt
  if len(shape) == 1:
    return (math.ceil(shape[0] / tc),)
  return (*shape[:-2], math.ceil(shape[-2] / tr), math.ceil(shape[-1] / tc))


def tile_absmax(x: Array, tile: Tile) -> tuple[Array, Array]:
  """(finite absmax, no NaN/inf) of every tile, shaped like the scale grid."""
  mt = _matrix_tile(x.shape, tile)
  if mt is None:
    return finite_absmax(x, keepdims=True)
  tr, tc = mt
  matrix = x[None, :] if x.ndim == 1 else x
  rows, cols = matrix.shape[-2:]
  pad = [(0, 0)] * (matrix.ndim - 2) + [(0, -rows % tr), (0, -cols % tc)]
  padded = jnp.pad(matrix, pad)
  n_r, n_c = padded.shape[-2] // tr, padded.shape[-1] // tc
  blocked = padded.reshape(*padded.shape[:-2], n_r, tr, n_c, tc)
  absmax, ok = finite_absmax(blocked, axis=(-3, -1))
  return (absmax[0], ok[0]) if x.ndim == 1 else (absmax, ok)


def expand_scale(scale: Array, tile: Tile, shape) -> Array:
  """Broadcasts a scale grid back to one value per element of ``shape``."""
  shape = tuple(shape)
  mt = _matrix_tile(shape, tile)
  if mt is None:
    return jnp.broadcast_to(scale.reshape((1,) * len(shape)), shape)
  tr, tc = mt
  grid = scale[None, :] if len(shape) == 1 else scale
  full = jnp.repeat(jnp.repeat(grid, tr, axis=-2), tc, axis=-1)
  rows = 1 if len(shape) == 1 else shape[-2]
  return full[..., :rows, : shape[-1]].reshape(shape)


def element_coordinates(shape) -> tuple[Array, Array]:
  """uint32 (row, col) of every element: row flattens all axes but the last.

  These are the stochastic-rounding hash counters (for a (B, M, K) array,
  ``(b * M + m, k)``). Rows wrap modulo 2^32, which only matters for tensors
  of more than 2^32 rows.
  """
  shape = tuple(shape)
  if len(shape) == 0:
    zero = jnp.zeros((), jnp.uint32)
    return zero, zero
  col = jnp.broadcast_to(jnp.arange(shape[-1], dtype=jnp.uint32), shape)
  row = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in range(len(shape) - 2, -1, -1):
    idx = jnp.arange(shape[axis], dtype=jnp.uint32)
    idx = idx.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    row = row + idx * jnp.uint32(stride & 0xFFFFFFFF)
    stride *= shape[axis]
  return row, col
