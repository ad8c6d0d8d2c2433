"""Portable-kernel plumbing: program tiles and masked tile access.

Every kernel works on canonical 3-D arrays ``(B, R, C)`` and a grid
``(B, cdiv(R, rows), cdiv(C, cols))`` of ``rows x cols`` program tiles. Edge
tiles of ragged shapes reach past the array: loads are masked (out-of-range
elements read as zero, so they never enter a maximum or a sum) and stores are
masked (nothing is written out of range). Triton does not mask on its own,
and the interpreter pads edge blocks with undefined values, so the masks are
what make ragged shapes correct on both; aligned shapes copy nothing.

A scale tile (the ``tile`` of ``lowprec_jax`` formats) maps to a
:class:`TileLayout`: ``(S, S)`` blocks and ``(1, G)`` groups are quantized by
one fused kernel (each program sees whole tiles); per-row ``(1, None)`` and
per-tensor ``None`` scales span many programs and take two stages.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import cdiv
from pallas_kernels.numerics import NumberGrid, random_bits, uniform_from_bits
from pallas_kernels.tiles import Tile, TileKind, kind_of, scale_shape, size_of


def call(kernel, *, grid, in_specs, outs, tuning, interpret, name, args):
  """One Triton-backend pallas_call; ``outs`` = [(struct, BlockSpec)] and
  ``tuning`` = (num_warps, num_stages). Returns the outputs as a tuple."""
  shapes, specs = zip(*outs)
  num_warps, num_stages = tuning
  return tuple(
    pl.pallas_call(
      kernel,
      out_shape=list(shapes),
      grid=grid,
      in_specs=list(in_specs),
      out_specs=list(specs),
      compiler_params=pltriton.CompilerParams(
        num_warps=num_warps, num_stages=num_stages
      ),
      interpret=interpret,
      name=name,
    )(*args)
  )


@dataclasses.dataclass(frozen=True)
class TileLayout:
  """Program tiles of a (B, R, C) array quantized with a scale tile.

  BLOCKS (S x S; one scale per program), ROW_GROUPS (1 x G; a scale per
  program row) and COLUMN_GROUPS (G x 1; a scale per program column) are
  fused: each program holds whole scale tiles. ROWS (1 x C) and TENSOR (one
  scale) span many programs and take two stages.
  """

  kind: TileKind
  shape: tuple[int, int, int]
  rows: int
  cols: int

  @property
  def fused(self) -> bool:
    """True when every program holds whole scale tiles."""
    return self.kind in _FUSED

  @property
  def grid(self) -> tuple[int, int, int]:
    b, r, c = self.shape
    return b, cdiv(r, self.rows), cdiv(c, self.cols)

  @property
  def scale_tile(self) -> tuple[int, int]:
    """Rows and columns sharing one scale (per-tensor: the whole matrix)."""
    _, r, c = self.shape
    return {
      TileKind.BLOCKS: (self.rows, self.cols),
      TileKind.ROW_GROUPS: (1, self.cols),
      TileKind.COLUMN_GROUPS: (self.rows, 1),
      TileKind.ROWS: (1, c),
      TileKind.TENSOR: (r, c),
    }[self.kind]

  @property
  def scale_shape(self) -> tuple[int, int, int]:
    tile = None if self.kind is TileKind.TENSOR else self.scale_tile
    return scale_shape(self.shape, tile)

  @property
  def reduce_axes(self) -> tuple[int, ...]:
    """Axes of a program tile that one scale spans (fused kinds)."""
    return _FUSED[self.kind]

  def tile_spec(self) -> pl.BlockSpec:
    return pl.BlockSpec((None, self.rows, self.cols), lambda b, i, j: (b, i, j))

  def scale_spec(self) -> pl.BlockSpec:
    """This program's scales: (1, 1), (rows, 1) or (1, cols)."""
    block = {
      TileKind.ROW_GROUPS: (None, self.rows, 1),
      TileKind.ROWS: (None, self.rows, 1),
      TileKind.COLUMN_GROUPS: (None, 1, self.cols),
    }.get(self.kind, (None, 1, 1))
    if self.kind is TileKind.ROWS:
      return pl.BlockSpec(block, lambda b, i, j: (b, i, 0))
    if self.kind is TileKind.TENSOR:
      return pl.BlockSpec(block, lambda b, i, j: (0, 0, 0))
    return pl.BlockSpec(block, lambda b, i, j: (b, i, j))

  def scale_mask(self, row: Array, col: Array) -> Array | None:
    """In-range mask of this program's scales (None: always in range)."""
    if self.kind in (TileKind.ROW_GROUPS, TileKind.ROWS):
      return row < self.shape[1]
    if self.kind is TileKind.COLUMN_GROUPS:
      return col < self.shape[2]
    return None


# Fused kinds -> the program-tile axes one scale spans.
_FUSED = {
  TileKind.BLOCKS: (0, 1),
  TileKind.ROW_GROUPS: (1,),
  TileKind.COLUMN_GROUPS: (0,),
}


def unsupported_tile_reason(tile) -> str | None:
  """Why no quantize kernel here serves scale ``tile`` (None: one does)."""
  if kind_of(tile) is TileKind.COLUMNS:
    return (
      f"tile {tile!r} has no quantize kernel; supported: None (per-tensor), "
      "(1, None) (per-row), (1, G), (G, 1) and (S, S) with G, S powers of two"
    )
  return None


def tile_layout(shape, tile: Tile, rows: int, cols: int) -> TileLayout:
  """The layout for scale ``tile``; ``rows``/``cols`` size the programs
  where the tile does not (per-tensor, per-row, and along groups).

  Raises:
    ValueError: for a malformed tile.
    NotImplementedError: for (None, 1) (per-column), which has no kernel.
  """
  shape = tuple(shape)
  kind = kind_of(tile)
  if kind is TileKind.COLUMNS:
    raise NotImplementedError(unsupported_tile_reason(tile))
  size = size_of(tile)
  if kind in (TileKind.TENSOR, TileKind.ROWS):
    return TileLayout(kind, shape, rows, cols)
  if kind is TileKind.ROW_GROUPS:
    return TileLayout(kind, shape, rows, size)
  if kind is TileKind.COLUMN_GROUPS:
    return TileLayout(kind, shape, size, cols)
  return TileLayout(kind, shape, size, size)


def tile_coordinates(rows: int, cols: int, shape) -> tuple[Array, Array, Array]:
  """This program's global rows (rows, 1), columns (1, cols) and in-range mask.

  Rows index axis 1 and columns axis 2 of the (B, R, C) array. Row masks are
  ``row < R``: Triton cannot slice a value (``mask[:, :1]``).
  """
  i, j = pl.program_id(1), pl.program_id(2)
  row = i * rows + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
  col = j * cols + lax.broadcasted_iota(jnp.int32, (1, cols), 1)
  return row, col, (row < shape[1]) & (col < shape[2])


def hash_coordinates(row: Array, col: Array, r: int) -> tuple[Array, Array]:
  """The SR hash counters: (b * R + row, col) as uint32 (rows wrap at 2^32)."""
  b = pl.program_id(0).astype(jnp.uint32)
  flat = b * jnp.uint32(r & 0xFFFFFFFF) + row.astype(jnp.uint32)
  return flat, col.astype(jnp.uint32)


def tile_codes(
  x, inverse, ok, row, col, m, seed_ref, grid: NumberGrid
) -> Array:
  """Codes of an f32 tile from its (broadcastable) reciprocal scales."""
  y = x * inverse
  u = None
  if seed_ref is not None:
    row, col = hash_coordinates(row, col, m)
    u = uniform_from_bits(random_bits(seed_ref[0], row, col))
  codes = grid.round(y, u)
  return jnp.where(ok, codes, jnp.zeros((), codes.dtype))


def store_block_scales(s_ref, scales: Array, block: int, shape) -> None:
  """Stores this program's (rows / S, cols / S) block scales of a (B, R, C)
  array quantized in ``block`` x ``block`` squares (masked at the edges)."""
  nr, nc = scales.shape
  i, j = pl.program_id(1), pl.program_id(2)
  s_rows = i * nr + lax.broadcasted_iota(jnp.int32, (nr, 1), 0)
  s_cols = j * nc + lax.broadcasted_iota(jnp.int32, (1, nc), 1)
  in_range = (s_rows < -(-shape[1] // block)) & (s_cols < -(-shape[2] // block))
  store(s_ref, scales, in_range)


def block_scales_out(shape, rows: int, cols: int, block: int):
  """(struct, spec) of the f32 block scales of (rows, cols) program tiles."""
  spec = pl.BlockSpec(
    (None, rows // block, cols // block), lambda b, i, j: (b, i, j)
  )
  return out_struct(scale_shape(shape, (block, block)), jnp.float32), spec


def load(ref, mask: Array, other=0) -> Array:
  """Masked load of a whole (possibly sliced) ref; masked elements = other.

  ``other`` is typed like the ref: Triton cannot cast an int constant to FP8.
  """
  if jnp.issubdtype(ref.dtype, jnp.floating):
    other = float(other)
  return pltriton.load(ref, mask=mask, other=other)


def store(ref, value: Array, mask: Array) -> None:
  """Masked store of a whole (possibly sliced) ref."""
  pltriton.store(ref, value.astype(ref.dtype), mask=mask)


def expand_rows(values: Array, repeat: int) -> Array:
  """(R, C) -> (R * repeat, C): each row repeated ``repeat`` times in place."""
  if repeat == 1:
    return values
  r, c = values.shape
  wide = jnp.broadcast_to(values[:, None, :], (r, repeat, c))
  return wide.reshape(r * repeat, c)


def expand_cols(values: Array, repeat: int) -> Array:
  """(R, C) -> (R, C * repeat): each column repeated ``repeat`` times in place."""
  if repeat == 1:
    return values
  r, c = values.shape
  wide = jnp.broadcast_to(values[:, :, None], (r, c, repeat))
  return wide.reshape(r, c * repeat)


def out_struct(shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
