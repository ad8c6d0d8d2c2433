"""Tile geometry: which scale each element uses.

A tile ``(tr, tc)`` covers the last two axes of a tensor (the last axis alone
for 1-D tensors); ``None`` entries span the whole axis; a ``None`` tile spans
the whole tensor. The scale grid has the value's rank and shape
``ceil(shape / tile)``: a ragged tail forms a partial tile that is padded with
zeros for the absmax and never dropped.
"""

import math

import jax.numpy as jnp
from jax import Array

from lowprec_jax.formats._format import Tile


def _matrix_tile(shape: tuple[int, ...], tile: Tile) -> tuple[int, int] | None:
  """Returns the concrete (tr, tc) on the last two axes, or None (per-tensor)."""
  if tile is None or len(shape) == 0:
    return None
  rows = shape[-2] if len(shape) >= 2 else 1
  cols = shape[-1]
  tr, tc = tile
  tr = rows if tr is None or len(shape) < 2 else tr
  tc = cols if tc is None else tc
  return max(tr, 1), max(tc, 1)


def scale_shape(shape: tuple[int, ...], tile: Tile) -> tuple[int, ...]:
  """Shape of the fp32 scale grid for a value of ``shape``."""
  mt = _matrix_tile(shape, tile)
  if mt is None:
    return (1,) * len(shape)
  tr, tc = mt
  if len(shape) == 1:
    return (math.ceil(shape[0] / tc),)
  return (
    *shape[:-2],
    math.ceil(shape[-2] / tr),
    math.ceil(shape[-1] / tc),
  )


def _as_matrix(x: Array) -> Array:
  """Views a 1-D array as one row so that the 2-D code serves both."""
  return x[None, :] if x.ndim == 1 else x


def _blocked(x: Array, tr: int, tc: int) -> Array:
  """Pads the last two axes to tile multiples; returns (..., nR, tr, nC, tc)."""
  rows, cols = x.shape[-2:]
  pad_r, pad_c = -rows % tr, -cols % tc
  if pad_r or pad_c:
    pad = [(0, 0)] * (x.ndim - 2) + [(0, pad_r), (0, pad_c)]
    x = jnp.pad(x, pad)
  n_r, n_c = x.shape[-2] // tr, x.shape[-1] // tc
  return x.reshape(*x.shape[:-2], n_r, tr, n_c, tc)


def _nan_max(x: Array, axis) -> Array:
  """max that is NaN wherever a NaN was reduced.

  XLA's max reduction does not promise to propagate NaN (on CPU a blocked
  multi-axis reduce drops it), so NaN is detected explicitly.
  """
  return jnp.where(
    jnp.any(jnp.isnan(x), axis=axis), jnp.nan, jnp.max(x, axis=axis)
  )


def tile_absmax(x: Array, tile: Tile) -> Array:
  """max |x| over each tile, shaped like the scale grid.

  NaN anywhere in a tile makes that tile's result NaN; +-inf makes it inf.
  """
  mt = _matrix_tile(x.shape, tile)
  if mt is None:
    return _nan_max(jnp.abs(x), None).reshape((1,) * x.ndim)
  tr, tc = mt
  blocked = _blocked(jnp.abs(_as_matrix(x)), tr, tc)
  absmax = _nan_max(blocked, (-3, -1))
  return absmax[0] if x.ndim == 1 else absmax


def expand_scale(scale: Array, tile: Tile, shape: tuple[int, ...]) -> Array:
  """Broadcasts the scale grid back to one value per element of ``shape``."""
  mt = _matrix_tile(shape, tile)
  if mt is None:
    return jnp.broadcast_to(scale.reshape((1,) * len(shape)), shape)
  tr, tc = mt
  grid = scale[None, :] if len(shape) == 1 else scale
  full = jnp.repeat(jnp.repeat(grid, tr, axis=-2), tc, axis=-1)
  rows = 1 if len(shape) == 1 else shape[-2]
  full = full[..., :rows, : shape[-1]]
  return full.reshape(shape)


def element_coordinates(shape: tuple[int, ...]) -> tuple[Array, Array]:
  """uint32 (row, col) of every element: row flattens all axes but the last.

  These are the counters of the stochastic-rounding hash. Rows wrap modulo
  2^32, which only matters for tensors of more than 2^32 rows.
  """
  if len(shape) == 0:
    zero = jnp.zeros((), jnp.uint32)
    return zero, zero
  col = jnp.arange(shape[-1], dtype=jnp.uint32)
  col = jnp.broadcast_to(col, shape)
  row = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in range(len(shape) - 2, -1, -1):
    idx = jnp.arange(shape[axis], dtype=jnp.uint32)
    idx = idx.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    row = row + idx * jnp.uint32(stride & 0xFFFFFFFF)
    stride *= shape[axis]
  return row, col
