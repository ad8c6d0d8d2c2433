"""Shared kernel plumbing: argument checks, program tiles, masked tile access.

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
from pallas_kernels._hash import random_bits, uniform_from_bits
from pallas_kernels._rounding import NumberGrid

FLOAT_DTYPES = tuple(
  np.dtype(d) for d in (jnp.float32, jnp.bfloat16, np.float16)
)
FP8_DTYPES = tuple(np.dtype(d) for d in (jnp.float8_e4m3fn, jnp.float8_e5m2))
Tile = tuple[int | None, int | None] | None


def describe(x) -> str:
  """'shape (2, 3, 4) and dtype float32' for error messages."""
  shape = tuple(getattr(x, "shape", ()))
  return f"shape {shape} and dtype {getattr(x, 'dtype', type(x).__name__)}"


def check_array(name: str, x, dtypes, ndim: int = 3) -> None:
  """Raises ValueError unless ``x`` is an ``ndim``-D array of one of ``dtypes``."""
  dtype = getattr(x, "dtype", None)
  if dtype is None or np.dtype(dtype) not in dtypes or x.ndim != ndim:
    names = ", ".join(str(d) for d in dtypes)
    raise ValueError(
      f"{name} has {describe(x)}; expected a {ndim}-D array of {names}"
    )


def check_operands(
  a_q, b_q, dtypes, b_dtypes=None
) -> tuple[int, int, int, int]:
  """Checks K-major GEMM operands (B, M, K) and (B, N, K); returns BMNK.

  ``b_dtypes`` (default: ``dtypes``) when b takes other code dtypes.
  """
  check_array("a_q", a_q, dtypes)
  check_array("b_q", b_q, dtypes if b_dtypes is None else b_dtypes)
  (ba, m, k), (bb, n, kb) = a_q.shape, b_q.shape
  if ba != bb or k != kb:
    raise ValueError(
      f"a_q has shape {a_q.shape} and b_q has shape {b_q.shape}; expected "
      "(B, M, K) and (B, N, K) with the same B and K"
    )
  return ba, m, n, k


def check_scales(name: str, s, want: tuple[int, ...], what: str) -> None:
  """Raises ValueError unless ``s`` is float32 of shape ``want``."""
  check_array(name, s, (np.dtype(np.float32),))
  if tuple(s.shape) != tuple(want):
    raise ValueError(
      f"{name} has {describe(s)}; for {what} expected float32 of shape "
      f"{tuple(want)}"
    )


def check_out_dtype(out_dtype) -> np.dtype:
  """The output dtype as np.dtype; ValueError unless f32, bf16 or f16."""
  try:
    dtype = np.dtype(out_dtype)
  except TypeError:
    dtype = None
  if dtype not in FLOAT_DTYPES:
    raise ValueError(
      f"out_dtype must be float32, bfloat16 or float16, got {out_dtype!r}"
    )
  return dtype


def is_power_of_two(n) -> bool:
  return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def seed_array(seed, rounding: str) -> Array | None:
  """The uint32 seed as a (1,) array for stochastic rounding, else None."""
  if rounding not in ("nearest", "stochastic"):
    raise ValueError(
      f"rounding must be 'nearest' or 'stochastic', got {rounding!r}"
    )
  if rounding == "nearest":
    return None
  if seed is None:
    raise ValueError("rounding='stochastic' needs seed= (a uint32 scalar)")
  if isinstance(seed, (int, np.integer)):
    return jnp.full((1,), int(seed) & 0xFFFFFFFF, jnp.uint32)
  dtype = getattr(seed, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.integer) or seed.ndim:
    raise ValueError(f"seed has {describe(seed)}; expected an integer scalar")
  return jnp.asarray(seed).astype(jnp.uint32).reshape(1)


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

  Kinds: "block" (S x S; one scale per program), "groups" (1 x G; a scale
  per program row), "col_groups" (G x 1; a scale per program column),
  "rows" (1 x C; two-stage) and "tensor" (one scale; two-stage).
  """

  kind: str
  shape: tuple[int, int, int]
  rows: int
  cols: int

  @property
  def fused(self) -> bool:
    """True when every program holds whole scale tiles."""
    return self.kind in ("block", "groups", "col_groups")

  @property
  def grid(self) -> tuple[int, int, int]:
    b, r, c = self.shape
    return b, cdiv(r, self.rows), cdiv(c, self.cols)

  @property
  def scale_tile(self) -> tuple[int, int]:
    """Rows and columns sharing one scale (per-tensor: the whole matrix)."""
    _, r, c = self.shape
    return {
      "block": (self.rows, self.cols),
      "groups": (1, self.cols),
      "col_groups": (self.rows, 1),
      "rows": (1, c),
      "tensor": (r, c),
    }[self.kind]

  @property
  def scale_shape(self) -> tuple[int, int, int]:
    b, r, c = self.shape
    if self.kind == "tensor":
      return (1, 1, 1)
    tr, tc = self.scale_tile
    return b, cdiv(r, tr), cdiv(c, tc)

  @property
  def reduce_axes(self) -> tuple[int, ...]:
    """Axes of a program tile that one scale spans (fused kinds)."""
    return {"block": (0, 1), "groups": (1,), "col_groups": (0,)}[self.kind]

  def tile_spec(self) -> pl.BlockSpec:
    return pl.BlockSpec((None, self.rows, self.cols), lambda b, i, j: (b, i, j))

  def scale_spec(self) -> pl.BlockSpec:
    """This program's scales: (1, 1), (rows, 1) or (1, cols)."""
    block = {
      "groups": (None, self.rows, 1),
      "rows": (None, self.rows, 1),
      "col_groups": (None, 1, self.cols),
    }.get(self.kind, (None, 1, 1))
    if self.kind == "rows":
      return pl.BlockSpec(block, lambda b, i, j: (b, i, 0))
    if self.kind == "tensor":
      return pl.BlockSpec(block, lambda b, i, j: (0, 0, 0))
    return pl.BlockSpec(block, lambda b, i, j: (b, i, j))

  def scale_mask(self, row: Array, col: Array) -> Array | None:
    """In-range mask of this program's scales (None: always in range)."""
    if self.kind in ("groups", "rows"):
      return row < self.shape[1]
    if self.kind == "col_groups":
      return col < self.shape[2]
    return None


def tile_layout(shape, tile: Tile, rows: int, cols: int) -> TileLayout:
  """The layout for scale ``tile``; ``rows``/``cols`` size the programs
  where the tile does not (per-tensor, per-row, and along groups).

  Raises:
    ValueError: for a malformed tile.
    NotImplementedError: for valid tiles without a kernel, such as (None, 1).
  """
  shape = tuple(shape)
  if tile is None:
    return TileLayout("tensor", shape, rows, cols)
  if not (isinstance(tile, tuple) and len(tile) == 2):
    raise ValueError(f"tile must be None or a pair (rows, cols), got {tile!r}")
  tr, tc = tile
  if tile == (1, None):
    return TileLayout("rows", shape, rows, cols)
  if tr == 1 and is_power_of_two(tc) and tc > 1:
    return TileLayout("groups", shape, rows, tc)
  if tc == 1 and is_power_of_two(tr) and tr > 1:
    return TileLayout("col_groups", shape, tr, cols)
  if tr == tc and is_power_of_two(tr) and tr > 1:
    return TileLayout("block", shape, tr, tr)
  raise NotImplementedError(
    f"tile {tile!r} has no quantize kernel; supported: None (per-tensor), "
    "(1, None) (per-row), (1, G), (G, 1) and (S, S) with G, S powers of two"
  )


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
