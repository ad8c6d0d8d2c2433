"""The bit-split quantize kernel: a gradient's INT4 parts with in-kernel
stochastic rounding, and the row norms leverage-score sampling needs.

For ``g`` (B, M, N) float, its per-tensor ``sigma``
(:func:`pallas_kernels.bit_split.split_sigma`, one reduction in XLA) and a
seed, each program rounds a ``rows x cols`` tile exactly as
:func:`pallas_kernels.bit_split.bit_split` (the same function runs in the
kernel) with uniforms hashed at the element's global coordinates
``(b * M + m, n)`` (:func:`pallas_kernels.numerics.random_bits`, the
stochastic-rounding counters of every quantizer), and writes

* ``parts=False``: ``c = 14 hi + lo`` (int8, |c| <= 105): the one INT8 GEMM
  operand of an unsampled split;
* ``parts=True``: ``hi`` and ``lo`` (int8) and, per row and program column,
  the partial sums of ``(14 hi)^2`` and ``lo^2`` in int32; their sum over
  columns (exact) gives the squared row norms of ``[14 hi; lo]``, the
  leverage scores' factors (:func:`lowprec_jax.ops._leverage.row_norms` of
  the same integer rows gives the same bits).

:func:`split_quantize_blocks` splits with a ``sigma`` per S x S block of g
instead, computed in the kernel from the block's maximum (no separate pass
over g), and writes ``c`` and the (B, M/S, N/S) sigmas: a token whose
gradient is small keeps its resolution however large another token's is.

:func:`split_quantize_reference` is the plain-jnp twin.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.experimental import pallas as pl

from pallas_kernels import _layout as L
from pallas_kernels import checks as C
from pallas_kernels import tiles
from pallas_kernels._common import cdiv
from pallas_kernels.backend import resolve_interpret
from pallas_kernels.bit_split import (
  SPLIT_BASE,
  bit_split,
  check_split,
  combined_codes,
  sigma_from_absmax,
  split_sigma,
)
from pallas_kernels.numerics import (
  finite_absmax,
  random_bits,
  reciprocal_rn,
  uniform_from_bits,
)
from pallas_kernels.tiles import element_coordinates


@dataclasses.dataclass(frozen=True)
class SplitQuantizeConfig:
  """Program tile and Triton knobs."""

  rows: int = 32
  cols: int = 128
  num_warps: int = 4
  num_stages: int = 1


DEFAULT_CONFIG = SplitQuantizeConfig()


def _squares(codes: Array, factor: int) -> Array:
  wide = codes.astype(jnp.int32) * factor
  return jnp.sum(wide * wide, axis=1, keepdims=True)


def _kernel(
  g_ref, sigma_ref, seed_ref, *out_refs, split, parts, rows, cols, shape
):
  m = shape[1]
  row, col, mask = L.tile_coordinates(rows, cols, shape)
  g = L.load(g_ref, mask).astype(jnp.float32)
  hashed_row, hashed_col = L.hash_coordinates(row, col, m)
  u = uniform_from_bits(random_bits(seed_ref[0], hashed_row, hashed_col))
  hi, lo, _ = bit_split(g, u, split, sigma_ref[...])
  if not parts:
    (c_ref,) = out_refs
    L.store(c_ref, combined_codes(hi, lo), mask)
    return
  hi_ref, lo_ref, hi_sq_ref, lo_sq_ref = out_refs
  L.store(hi_ref, hi, mask)
  L.store(lo_ref, lo, mask)
  zero = jnp.zeros((), jnp.int8)
  row_ok = row < m
  L.store(hi_sq_ref, _squares(jnp.where(mask, hi, zero), SPLIT_BASE), row_ok)
  L.store(lo_sq_ref, _squares(jnp.where(mask, lo, zero), 1), row_ok)


@functools.partial(
  jax.jit, static_argnames=("split", "parts", "config", "interpret")
)
def _call(g, sigma, seed, *, split, parts, config, interpret):
  b, m, n = g.shape
  rows, cols = config.rows, config.cols
  grid = (b, cdiv(m, rows), cdiv(n, cols))
  tile = pl.BlockSpec((None, rows, cols), lambda b, i, j: (b, i, j))
  codes = L.out_struct(g.shape, np.int8)
  outs = [(codes, tile)]
  if parts:
    partial = (
      L.out_struct((b, m, grid[2]), jnp.int32),
      pl.BlockSpec((None, rows, 1), lambda b, i, j: (b, i, j)),
    )
    outs = [(codes, tile), (codes, tile), partial, partial]

  kernel = functools.partial(
    _kernel, split=split, parts=parts, rows=rows, cols=cols, shape=g.shape
  )
  return L.call(
    kernel,
    grid=grid,
    in_specs=[
      tile,
      pl.BlockSpec((1, 1), lambda b, i, j: (0, 0)),
      pl.BlockSpec((1,), lambda b, i, j: (0,)),
    ],
    outs=outs,
    tuning=(config.num_warps, config.num_stages),
    interpret=interpret,
    name="lpj_split_quantize",
    args=[g, sigma.reshape(1, 1), seed.reshape(1)],
  )


def _check(g, sigma, seed, split):
  C.check_array("g", g, C.FLOAT_DTYPES)
  check_split(split)
  sigma = jnp.asarray(sigma)
  if sigma.shape != () or sigma.dtype != jnp.float32:
    raise ValueError(
      f"sigma has {C.describe(sigma)}; expected a float32 scalar "
      "(pallas_kernels.bit_split.split_sigma of g)"
    )
  return sigma, C.as_seed(seed)


def split_quantize(
  g: Array,
  sigma: Array,
  seed,
  *,
  split: str,
  parts: bool,
  interpret: bool | None = None,
  config: SplitQuantizeConfig = DEFAULT_CONFIG,
):
  """``c`` (parts=False) or ``(hi, lo, hi_squares, lo_squares)`` of ``g``
  (module docstring); the squares are (B, M) int32 row sums."""
  sigma, seed = _check(g, sigma, seed, split)
  outs = _call(
    g,
    sigma,
    seed,
    split=split,
    parts=parts,
    config=config,
    interpret=resolve_interpret(interpret),
  )
  if not parts:
    return outs[0]
  hi, lo, hi_sq, lo_sq = outs
  return hi, lo, jnp.sum(hi_sq, axis=2), jnp.sum(lo_sq, axis=2)


def _blocks_kernel(
  g_ref, seed_ref, c_ref, s_ref, *, split, block, rows, cols, shape
):
  row, col, mask = L.tile_coordinates(rows, cols, shape)
  g = jnp.where(mask, L.load(g_ref, mask).astype(jnp.float32), 0.0)
  nr, nc = rows // block, cols // block
  absmax, ok = finite_absmax(g.reshape(nr, block, nc, block), axis=(1, 3))
  sigma = sigma_from_absmax(absmax, ok, split, reciprocal=reciprocal_rn)
  hashed_row, hashed_col = L.hash_coordinates(row, col, shape[1])
  u = uniform_from_bits(random_bits(seed_ref[0], hashed_row, hashed_col))
  wide = L.expand_cols(L.expand_rows(sigma, block), block)
  hi, lo, _ = bit_split(g, u, split, wide)
  L.store(c_ref, combined_codes(hi, lo), mask)
  L.store_block_scales(s_ref, sigma, block, shape)


@functools.partial(
  jax.jit, static_argnames=("split", "block", "config", "interpret")
)
def _blocks_call(g, seed, *, split, block, config, interpret):
  b, m, n = g.shape
  rows, cols = max(config.rows, block), max(config.cols, block)
  grid = (b, cdiv(m, rows), cdiv(n, cols))
  tile = pl.BlockSpec((None, rows, cols), lambda b, i, j: (b, i, j))
  kernel = functools.partial(
    _blocks_kernel, split=split, block=block, rows=rows, cols=cols,
    shape=g.shape,
  )  # fmt: skip
  return L.call(
    kernel,
    grid=grid,
    in_specs=[tile, pl.BlockSpec((1,), lambda b, i, j: (0,))],
    outs=[
      (L.out_struct(g.shape, np.int8), tile),
      L.block_scales_out(g.shape, rows, cols, block),
    ],
    tuning=(config.num_warps, config.num_stages),
    interpret=interpret,
    name="lpj_split_quantize_blocks",
    args=[g, seed.reshape(1)],
  )


def _check_blocks(g, seed, split, block):
  C.check_array("g", g, C.FLOAT_DTYPES)
  check_split(split)
  if block not in tiles.GROUP_SIZES:
    raise ValueError(f"block must be one of {tiles.GROUP_SIZES}, got {block!r}")
  return C.as_seed(seed)


def split_quantize_blocks(
  g: Array,
  seed,
  *,
  split: str,
  block: int,
  interpret: bool | None = None,
  config: SplitQuantizeConfig = DEFAULT_CONFIG,
) -> tuple[Array, Array]:
  """(``c = 14 hi + lo`` int8 (B, M, N), sigma f32 (B, cdiv(M, S),
  cdiv(N, S))) of g split with a sigma per ``block`` x ``block`` square."""
  seed = _check_blocks(g, seed, split, block)
  return _blocks_call(
    g,
    seed,
    split=split,
    block=block,
    config=config,
    interpret=resolve_interpret(interpret),
  )


def split_quantize_blocks_reference(g, seed, *, split: str, block: int):
  """Twin of :func:`split_quantize_blocks` in plain jnp."""
  seed = _check_blocks(g, seed, split, block)
  sigma = split_sigma(g, split, block)
  row, col = element_coordinates(g.shape)
  u = uniform_from_bits(random_bits(seed, row, col))
  wide = tiles.expand_scale(sigma, (block, block), g.shape)
  hi, lo, _ = bit_split(g, u, split, wide)
  return combined_codes(hi, lo), sigma


def split_quantize_reference(g, sigma, seed, *, split: str, parts: bool):
  """Twin of :func:`split_quantize` in plain jnp."""
  sigma, seed = _check(g, sigma, seed, split)
  row, col = element_coordinates(g.shape)
  u = uniform_from_bits(random_bits(seed, row, col))
  hi, lo, _ = bit_split(g, u, split, sigma)
  if not parts:
    return combined_codes(hi, lo)

  def squares(codes, factor):
    wide = codes.astype(jnp.int32) * factor
    return jnp.sum(wide * wide, axis=2)

  return hi, lo, squares(hi, SPLIT_BASE), squares(lo, 1)
