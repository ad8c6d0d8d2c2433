"""The plain-jnp quantizer on whole arrays: the reference every kernel matches.

:func:`quantize_array` is the one jnp implementation of the contract of
:mod:`pallas_kernels.numerics` for any rank and scale tile:
``lowprec_jax.formats.quantize`` is this function behind argument checks,
and the quantize kernels' twins below (same arguments as the kernels, bar
``interpret`` and ``config``) call it on (B, M, K) arrays. No tiling: the
tensor is zero-padded to whole tiles, reshaped and reduced
(:func:`pallas_kernels.tiles.tile_absmax`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from pallas_kernels import checks as C
from pallas_kernels import tiles
from pallas_kernels.numerics import (
  F32_MAX,
  NumberGrid,
  divided_reciprocal,
  random_bits,
  tile_scale,
  uniform_from_bits,
)


def fp8_grid(dtype) -> NumberGrid:
  """The grid of an FP8 ``dtype``; ValueError for anything else."""
  try:
    dtype = np.dtype(dtype)
  except TypeError:
    dtype = None
  if dtype not in C.FP8_DTYPES:
    raise ValueError(
      f"dtype must be float8_e4m3fn or float8_e5m2, got {dtype!r}"
    )
  return NumberGrid(dtype)


@functools.partial(jax.jit, static_argnames=("grid", "tile", "scale_dtype"))
def quantize_array(
  x: Array,
  seed: Array | None = None,
  *,
  grid: NumberGrid,
  tile: tiles.Tile,
  scale_dtype=np.dtype(np.float32),
) -> tuple[Array, Array]:
  """(codes, scales) of ``x`` (any rank) on ``grid`` over ``tile``.

  Args:
    x: a float array.
    seed: a uint32 scalar (or one-element array) for stochastic rounding at
      each element's global coordinates; None rounds to nearest.
    grid: the codes' number grid.
    tile: the scale tile (:mod:`pallas_kernels.tiles`).
    scale_dtype: float32, or bfloat16 to store scales rounded up to bf16.

  Returns:
    Codes of ``grid.dtype`` with ``x``'s shape and scales of ``scale_dtype``
    shaped ``tiles.scale_shape(x.shape, tile)``.
  """
  x32 = x.astype(jnp.float32)
  absmax, ok = tiles.tile_absmax(x32, tile)
  scale, inverse = tile_scale(
    absmax,
    ok,
    grid.qmax,
    scale_dtype=scale_dtype,
    reciprocal=divided_reciprocal,
  )
  inverse = tiles.expand_scale(inverse, tile, x.shape)
  u = None
  if seed is not None:
    row, col = tiles.element_coordinates(x.shape)
    u = uniform_from_bits(random_bits(seed.reshape(()), row, col))
  codes = grid.round(x32 * inverse, u)
  codes = jnp.where(inverse <= F32_MAX, codes, jnp.zeros((), codes.dtype))
  return codes, scale.astype(scale_dtype)


@functools.partial(jax.jit, static_argnames=("tile", "out_dtype"))
def dequantize_array(
  q: Array, s: Array, *, tile: tiles.Tile, out_dtype=jnp.float32
) -> Array:
  """``q * s`` per tile, computed in f32, cast to ``out_dtype``."""
  scale = tiles.expand_scale(s.astype(jnp.float32), tile, q.shape)
  return (q.astype(jnp.float32) * scale).astype(out_dtype)


def quantize_int8_block_reference(
  x: Array,
  *,
  block: int,
  rounding: str = "nearest",
  seed=None,
  transpose: bool = False,
):
  """Twin of :func:`pallas_kernels.quantize.quantize_int8_block`."""
  C.check_array("x", x, C.FLOAT_DTYPES)
  seed = C.seed_array(seed, rounding)
  tile = (block, block)
  q, s = quantize_array(x, seed, grid=NumberGrid.int8(), tile=tile)
  if transpose:
    return q, s, q.mT, s.mT
  return q, s


def quantize_fp8_reference(
  x: Array, *, dtype, tile, rounding: str = "nearest", seed=None
):
  """Twin of :func:`pallas_kernels.quantize.quantize_fp8`."""
  C.check_array("x", x, C.FLOAT_DTYPES)
  tiles.kind_of(tile)  # ValueError for a malformed tile
  seed = C.seed_array(seed, rounding)
  return quantize_array(x, seed, grid=fp8_grid(dtype), tile=tile)


def dequantize_reference(
  q: Array, s: Array, *, tile, out_dtype=jnp.float32
) -> Array:
  """Twin of :func:`pallas_kernels.quantize.dequantize`."""
  return dequantize_array(q, s, tile=tile, out_dtype=out_dtype)
