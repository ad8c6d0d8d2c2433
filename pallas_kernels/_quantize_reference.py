"""Plain-jnp twins of the quantize kernels, on whole arrays.

Same arguments (bar ``interpret`` and ``config``), same math and the same
rounding helpers as :mod:`pallas_kernels.quantize`, but no tiling: the tensor
is zero-padded to whole tiles, reshaped to (B, nR, tr, nC, tc) and reduced.
Kernel tests compare the kernels with these, and these with
``lowprec_jax.formats.quantize``; the Mosaic kernels and the benchmarks use
them without importing the library.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from pallas_kernels import _layout as L
from pallas_kernels._hash import random_bits, uniform_from_bits
from pallas_kernels._rounding import (
  F32_MAX,
  NumberGrid,
  finite_absmax,
  tile_scale,
)


def fp8_grid(dtype) -> NumberGrid:
  """The grid of an FP8 ``dtype``; ValueError for anything else."""
  try:
    dtype = np.dtype(dtype)
  except TypeError:
    dtype = None
  if dtype not in L.FP8_DTYPES:
    raise ValueError(
      f"dtype must be float8_e4m3fn or float8_e5m2, got {dtype!r}"
    )
  return NumberGrid(dtype)


def _blocked(x: Array, tr: int, tc: int) -> Array:
  b, r, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, -r % tr), (0, -c % tc)))
  return x.reshape(b, x.shape[1] // tr, tr, x.shape[2] // tc, tc)


def _expand(values: Array, tr: int, tc: int, shape) -> Array:
  """Scale grid -> one value per element of ``shape`` (tails cropped)."""
  full = jnp.repeat(jnp.repeat(values, tr, axis=1), tc, axis=2)
  full = jnp.broadcast_to(full, (shape[0], *full.shape[1:]))
  return full[:, : shape[1], : shape[2]]


def stochastic_uniforms(seed: Array, shape) -> Array:
  """U[0, 1) of every element of a (B, R, C) array from its hash counters."""
  b, r, c = shape
  row = lax.broadcasted_iota(jnp.uint32, shape, 0) * jnp.uint32(
    r & 0xFFFFFFFF
  ) + lax.broadcasted_iota(jnp.uint32, shape, 1)
  col = lax.broadcasted_iota(jnp.uint32, shape, 2)
  return uniform_from_bits(random_bits(seed[0], row, col))


@functools.partial(jax.jit, static_argnames=("grid", "layout"))
def quantize_reference(
  x: Array, grid: NumberGrid, layout: L.TileLayout, seed: Array | None
):
  """(codes, scales) of ``x`` for any tile layout, in plain jnp."""
  x32 = x.astype(jnp.float32)
  tr, tc = layout.scale_tile
  if layout.kind == "tensor":
    absmax, ok = finite_absmax(x32, keepdims=True)
  else:
    absmax, ok = finite_absmax(_blocked(x32, tr, tc), axis=(2, 4))
  scale, inverse = tile_scale(absmax, ok, grid.qmax)
  inverse = _expand(inverse, tr, tc, x.shape)
  u = None if seed is None else stochastic_uniforms(seed, x.shape)
  codes = grid.round(x32 * inverse, u)
  codes = jnp.where(inverse <= F32_MAX, codes, jnp.zeros((), codes.dtype))
  return codes, scale


def quantize_int8_block_reference(
  x: Array,
  *,
  block: int,
  rounding: str = "nearest",
  seed=None,
  transpose: bool = False,
):
  """Twin of :func:`pallas_kernels.quantize.quantize_int8_block`."""
  L.check_array("x", x, L.FLOAT_DTYPES)
  layout = L.tile_layout(x.shape, (block, block), block, block)
  seed = L.seed_array(seed, rounding)
  q, s = quantize_reference(x, NumberGrid.int8(), layout, seed)
  if transpose:
    return q, s, q.mT, s.mT
  return q, s


def quantize_fp8_reference(
  x: Array, *, dtype, tile, rounding: str = "nearest", seed=None
):
  """Twin of :func:`pallas_kernels.quantize.quantize_fp8`."""
  L.check_array("x", x, L.FLOAT_DTYPES)
  layout = L.tile_layout(x.shape, tile, 1, 1)
  seed = L.seed_array(seed, rounding)
  return quantize_reference(x, fp8_grid(dtype), layout, seed)


def dequantize_reference(
  q: Array, s: Array, *, tile, out_dtype=jnp.float32
) -> Array:
  """Twin of :func:`pallas_kernels.quantize.dequantize`."""
  layout = L.tile_layout(q.shape, tile, 1, 1)
  scale = _expand(s, *layout.scale_tile, q.shape)
  return (q.astype(jnp.float32) * scale).astype(out_dtype)
