"""Fused Hadamard rotation + INT4 quantization + packing: one pass over x.

For ``x`` (B, R, K) float and a Hadamard block ``h`` dividing K, each program
loads a ``rows x cols`` tile (``cols`` a multiple of ``h`` and of the scale
block), rotates it in registers with the butterflies of
:func:`pallas_kernels.hadamard.butterflies` (``v = x H``, the very function
the ``"xla"`` reference runs, so ``v`` is bit-identical), quantizes ``v`` and
writes the codes packed two per byte along K (:mod:`pallas_kernels.int4`).
x is read once and only the packed codes (half a byte per element) and
scales are written: no rotated copy of x ever reaches HBM.

Two scale rules:

* :func:`hadamard_quantize_lsq`: a learned per-tensor step ``s`` (given);
  ``y = v * RN(1/s)`` and LSQ's codes and derivative codes
  (:func:`pallas_kernels.lsq.lsq_codes`), both packed;
* :func:`hadamard_quantize_blocks`: absmax S x S blocks, ``scale =
  absmax / 7`` and round-to-nearest-even codes in [-7, 7]
  (:func:`pallas_kernels.numerics.tile_scale`, the contract of every
  quantizer: a NaN/inf block gets scale NaN and codes 0, zeros scale 1), or
  with ``clip_candidates`` the scale of the per-block clip search
  (:mod:`pallas_kernels.clip_search`).

The backward's ``H^T = H`` on the two f32 gradients is
:func:`hadamard_rotate`: the same butterflies and a cast to the output
dtype in one pass (XLA runs the reference's stages as one pass over the
tensor each: 7 passes of f32 for a block of 128).

The twins :func:`hadamard_quantize_lsq_reference`,
:func:`hadamard_quantize_blocks_reference` and
:func:`pallas_kernels.hadamard.block_hadamard` are plain jnp (rotate,
quantize, pack) and what the ``"xla"`` implementation runs.
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
from pallas_kernels.clip_search import (
  check_clip_candidates,
  searched_block_quantize,
)
from pallas_kernels.hadamard import (
  block_hadamard,
  butterflies,
  check_hadamard_block,
  normalisation,
)
from pallas_kernels.int4 import pack_int4, pack_pairs
from pallas_kernels.lsq import lsq_codes, lsq_reciprocal
from pallas_kernels.numerics import (
  F32_MAX,
  NumberGrid,
  finite_absmax,
  tile_scale,
)
from pallas_kernels.quantize_reference import quantize_array


@dataclasses.dataclass(frozen=True)
class HadamardQuantizeConfig:
  """Program tile (``rows`` raised to the scale block, ``cols`` to the
  Hadamard and scale blocks) and Triton knobs."""

  rows: int = 32
  cols: int = 64
  num_warps: int = 4
  num_stages: int = 1


DEFAULT_CONFIG = HadamardQuantizeConfig()


def _logical(x, transposed: bool) -> tuple[int, int, int]:
  """(B, R, K) of x stored as (B, R, K), or (B, K, R) when ``transposed``."""
  b, r, k = x.shape
  return (b, k, r) if transposed else (b, r, k)


def _check(x, hadamard_block: int, block=None, transposed=False) -> None:
  C.check_array("x", x, C.FLOAT_DTYPES)
  k = _logical(x, transposed)[2]
  if k % 2:
    raise ValueError(
      f"x has shape {x.shape}: INT4 codes are packed two per byte along K, "
      "which must be even"
    )
  check_hadamard_block(hadamard_block, k, name="hadamard_block")
  if block is not None and block not in tiles.GROUP_SIZES:
    raise ValueError(
      f"block must be one of {tiles.GROUP_SIZES} (INT4 S x S scale blocks), "
      f"got {block!r}"
    )


def _rotated(x_ref, rows, cols, shape, hadamard_block, transposed=False):
  """(v = x H for this program's tile in f32, row, col, in-range mask);
  ``shape`` is the logical (B, R, K), x's tile is stored transposed when
  ``transposed`` (transposed back in registers)."""
  row, col, mask = L.tile_coordinates(rows, cols, shape)
  if transposed:
    v = L.load(x_ref, mask.T).astype(jnp.float32).T
  else:
    v = L.load(x_ref, mask).astype(jnp.float32)
  if hadamard_block > 1:
    v = butterflies(v, hadamard_block) * normalisation(hadamard_block)
  return v, row, col, mask


def _packed_mask(rows, cols, shape):
  """In-range mask of this program's (rows, cols / 2) packed codes."""
  i, j = pl.program_id(1), pl.program_id(2)
  row = i * rows + jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
  col = j * (cols // 2) + jax.lax.broadcasted_iota(jnp.int32, (1, cols // 2), 1)
  return (row < shape[1]) & (col < shape[2] // 2)


def _lsq_kernel(x_ref, inv_ref, q_ref, d_ref, *, rows, cols, shape, h, t):
  v, _, _, _ = _rotated(x_ref, rows, cols, shape, h, t)
  q, d = lsq_codes(v * inv_ref[...])
  mask = _packed_mask(rows, cols, shape)
  L.store(q_ref, pack_pairs(q), mask)
  L.store(d_ref, pack_pairs(d), mask)


def _blocks_kernel(
  x_ref, q_ref, s_ref, *, rows, cols, shape, h, t, block, candidates
):
  v, row, col, mask = _rotated(x_ref, rows, cols, shape, h, t)
  v = jnp.where(mask, v, 0.0)
  nr, nc = rows // block, cols // block
  grid = NumberGrid.int4()
  if len(candidates) > 1:
    codes, scale = searched_block_quantize(v, block, candidates, grid.qmax)
  else:
    absmax, ok = finite_absmax(v.reshape(nr, block, nc, block), axis=(1, 3))
    scale, inverse = tile_scale(absmax, ok, grid.qmax)
    inverse = L.expand_cols(L.expand_rows(inverse, block), block)
    codes = L.tile_codes(
      v, inverse, inverse <= F32_MAX, row, col, shape[1], None, grid
    )
  L.store(q_ref, pack_pairs(codes), _packed_mask(rows, cols, shape))
  L.store_block_scales(s_ref, scale, block, shape)


def _rotate_kernel(x_ref, out_ref, *, rows, cols, shape, h, t_out):
  v, _, _, mask = _rotated(x_ref, rows, cols, shape, h)
  if t_out:
    L.store(out_ref, v.T, mask.T)
  else:
    L.store(out_ref, v, mask)


def _program_tile(config, hadamard_block, block):
  side = block or 1
  return max(config.rows, side), max(config.cols, hadamard_block, side)


def _tile_spec(rows, cols, transposed) -> pl.BlockSpec:
  """This program's (rows, cols) tile of a (B, R, K) array, or its (cols,
  rows) tile of the (B, K, R) array stored transposed."""
  if transposed:
    return pl.BlockSpec((None, cols, rows), lambda b, i, j: (b, j, i))
  return pl.BlockSpec((None, rows, cols), lambda b, i, j: (b, i, j))


def _specs(shape, rows, cols, transposed=False):
  """(grid, x's tile spec, the packed codes' spec) over logical ``shape``."""
  b, r, k = shape
  grid = (b, cdiv(r, rows), cdiv(k, cols))
  tile = _tile_spec(rows, cols, transposed)
  packed = pl.BlockSpec((None, rows, cols // 2), lambda b, i, j: (b, i, j))
  return grid, tile, packed


@functools.partial(
  jax.jit,
  static_argnames=("hadamard_block", "transposed", "config", "interpret"),
)
def _lsq_call(x, inverse, *, hadamard_block, transposed, config, interpret):
  shape = _logical(x, transposed)
  rows, cols = _program_tile(config, hadamard_block, None)
  grid, tile, packed = _specs(shape, rows, cols, transposed)
  out = L.out_struct((*shape[:2], shape[2] // 2), np.uint8)
  return L.call(
    functools.partial(
      _lsq_kernel,
      rows=rows,
      cols=cols,
      shape=shape,
      h=hadamard_block,
      t=transposed,
    ),
    grid=grid,
    in_specs=[tile, pl.BlockSpec((1, 1), lambda b, i, j: (0, 0))],
    outs=[(out, packed), (out, packed)],
    tuning=(config.num_warps, config.num_stages),
    interpret=interpret,
    name="lpj_hadamard_quantize_lsq",
    args=[x, inverse.reshape(1, 1)],
  )


@functools.partial(
  jax.jit,
  static_argnames=(
    "hadamard_block", "block", "candidates", "transposed", "config",
    "interpret",
  ),
)  # fmt: skip
def _blocks_call(
  x, *, hadamard_block, block, candidates, transposed, config, interpret
):
  shape = _logical(x, transposed)
  rows, cols = _program_tile(config, hadamard_block, block)
  grid, tile, packed = _specs(shape, rows, cols, transposed)
  return L.call(
    functools.partial(
      _blocks_kernel,
      rows=rows,
      cols=cols,
      shape=shape,
      h=hadamard_block,
      t=transposed,
      block=block,
      candidates=candidates,
    ),
    grid=grid,
    in_specs=[tile],
    outs=[
      (L.out_struct((*shape[:2], shape[2] // 2), np.uint8), packed),
      L.block_scales_out(shape, rows, cols, block),
    ],
    tuning=(config.num_warps, config.num_stages),
    interpret=interpret,
    name="lpj_hadamard_quantize_blocks",
    args=[x],
  )


@functools.partial(
  jax.jit,
  static_argnames=(
    "hadamard_block", "out_dtype", "transposed_out", "config", "interpret"
  ),
)  # fmt: skip
def _rotate_call(
  x, *, hadamard_block, out_dtype, transposed_out, config, interpret
):
  rows, cols = _program_tile(config, hadamard_block, None)
  grid, tile, _ = _specs(x.shape, rows, cols)
  b, r, k = x.shape
  out_shape = (b, k, r) if transposed_out else x.shape
  return L.call(
    functools.partial(
      _rotate_kernel,
      rows=rows,
      cols=cols,
      shape=x.shape,
      h=hadamard_block,
      t_out=transposed_out,
    ),
    grid=grid,
    in_specs=[tile],
    outs=[
      (
        L.out_struct(out_shape, out_dtype),
        _tile_spec(rows, cols, transposed_out),
      )
    ],
    tuning=(config.num_warps, config.num_stages),
    interpret=interpret,
    name="lpj_hadamard_rotate",
    args=[x],
  )[0]


def hadamard_rotate(
  x: Array,
  *,
  hadamard_block: int,
  out_dtype,
  transposed_out: bool = False,
  interpret: bool | None = None,
  config: HadamardQuantizeConfig = DEFAULT_CONFIG,
) -> Array:
  """``x H`` of x (B, R, K) in ``out_dtype``: :func:`pallas_kernels.
  hadamard.block_hadamard` cast to ``out_dtype``, bit for bit, in one pass;
  written (B, K, R) when ``transposed_out`` (a weight stored (K, N))."""
  C.check_array("x", x, C.FLOAT_DTYPES)
  check_hadamard_block(hadamard_block, x.shape[2], name="hadamard_block")
  return _rotate_call(
    x,
    hadamard_block=hadamard_block,
    out_dtype=C.check_out_dtype(out_dtype),
    transposed_out=transposed_out,
    config=config,
    interpret=resolve_interpret(interpret),
  )


def hadamard_quantize_lsq(
  x: Array,
  step: Array,
  *,
  hadamard_block: int,
  transposed: bool = False,
  interpret: bool | None = None,
  config: HadamardQuantizeConfig = DEFAULT_CONFIG,
) -> tuple[Array, Array]:
  """(packed codes, packed derivative codes), uint8 (B, R, K/2), of
  ``x H`` quantized with the learned step ``step`` (a float scalar, used as
  ``|step|``); x is (B, R, K), or stored (B, K, R) when ``transposed`` (a
  weight stored (K, N), read without a transposed copy).

  Raises ValueError for x not a 3-D float array, odd K, or a Hadamard block
  that is not a power of two dividing K.
  """
  _check(x, hadamard_block, transposed=transposed)
  return _lsq_call(
    x,
    lsq_reciprocal(jnp.asarray(step)),
    hadamard_block=hadamard_block,
    transposed=transposed,
    config=config,
    interpret=resolve_interpret(interpret),
  )


def hadamard_quantize_blocks(
  x: Array,
  *,
  hadamard_block: int,
  block: int,
  clip_candidates: tuple[float, ...] = (1.0,),
  transposed: bool = False,
  interpret: bool | None = None,
  config: HadamardQuantizeConfig = DEFAULT_CONFIG,
) -> tuple[Array, Array]:
  """(packed codes uint8 (B, R, K/2), f32 scales (B, cdiv(R, S), cdiv(K, S)))
  of ``x H`` quantized in absmax ``block`` x ``block`` squares (with a
  per-block clip search over ``clip_candidates`` when there are several);
  x stored (B, K, R) when ``transposed``."""
  _check(x, hadamard_block, block, transposed)
  check_clip_candidates(clip_candidates)
  return _blocks_call(
    x,
    hadamard_block=hadamard_block,
    block=block,
    candidates=clip_candidates,
    transposed=transposed,
    config=config,
    interpret=resolve_interpret(interpret),
  )


def hadamard_quantize_lsq_reference(
  x, step, *, hadamard_block, transposed=False
):
  """Twin of :func:`hadamard_quantize_lsq` in plain jnp."""
  _check(x, hadamard_block, transposed=transposed)
  v = block_hadamard(x.mT if transposed else x, hadamard_block)
  q, d = lsq_codes(v * lsq_reciprocal(jnp.asarray(step)))
  return pack_int4(q), pack_int4(d)


def hadamard_quantize_blocks_reference(
  x, *, hadamard_block, block, clip_candidates=(1.0,), transposed=False
):
  """Twin of :func:`hadamard_quantize_blocks` in plain jnp."""
  _check(x, hadamard_block, block, transposed)
  check_clip_candidates(clip_candidates)
  v = block_hadamard(x.mT if transposed else x, hadamard_block)
  grid = NumberGrid.int4()
  if len(clip_candidates) == 1:
    q, s = quantize_array(v, None, grid=grid, tile=(block, block))
    return pack_int4(q), s
  b, r, k = v.shape
  rp, kp = -(-r // block) * block, -(-k // block) * block
  padded = jnp.pad(v, ((0, 0), (0, rp - r), (0, kp - k)))
  q, s = searched_block_quantize(
    padded.reshape(b * rp, kp), block, clip_candidates, grid.qmax
  )
  q = q.reshape(b, rp, kp)[:, :r, :k]
  return pack_int4(q), s.reshape(b, rp // block, kp // block)
