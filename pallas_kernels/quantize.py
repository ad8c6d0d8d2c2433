"""Quantize and dequantize kernels: INT8 square blocks and FP8 tiles.

For ``x`` of shape (B, M, K), a scale tile and a grid maximum ``qmax``
(127 for INT8, 448 for E4M3, 57344 for E5M2), exactly as
``lowprec_jax.formats.quantize``:

    absmax = max_{tile} |x|
    scale  = 1 if absmax == 0; NaN if the tile holds NaN or inf;
             clip(absmax / qmax, 2^-126, max_scale(qmax)) otherwise
    y      = x * (1 / scale)
    q      = rint(y) or floor(y + u)       (INT8, clipped to [-127, 127])
           = RNE or SR onto the FP8 grid   (FP8, saturated to [-fmax, fmax])
    q      = 0 where the scale is NaN

with ``u = uniform(hash(seed, b * M + m, k))`` for stochastic rounding: the
global coordinates of the element in the (B, M, K) array, independent of the
program tiles. Codes and scales are bit-identical to the reference (every
rounding step uses :mod:`pallas_kernels._rounding`).

* ``quantize_int8_block``: one program per S x S block. With
  ``transpose=True`` the same program also writes the block transposed into
  ``q_t`` (B, K, M): the same codes (hashed at their original coordinates),
  with the transposed scale grid, so ``q_t == q.mT`` exactly. ``quantize_fp8``
  does the same for S x S blocks and per-tensor scales.
* ``quantize_fp8``: S x S blocks, 1 x G and G x 1 groups in one fused kernel;
  per-row and per-tensor scales in two stages: a kernel writes the maximum
  of every (row, column tile), ``jnp.max`` reduces that small array, and the
  quantize kernel applies the scales.
* ``dequantize``: ``q * scale`` per tile, cast to ``out_dtype``.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import Array
from jax.experimental import pallas as pl

from pallas_kernels import _layout as L
from pallas_kernels import checks as C
from pallas_kernels import tiles
from pallas_kernels.backend import resolve_interpret
from pallas_kernels.numerics import (
  F32_MAX,
  NumberGrid,
  finite_absmax,
  reduced_tile_scale,
  tile_scale,
)
from pallas_kernels.quantize_reference import (
  dequantize_reference as dequantize_reference,
)
from pallas_kernels.quantize_reference import fp8_grid
from pallas_kernels.quantize_reference import (
  quantize_fp8_reference as quantize_fp8_reference,
)
from pallas_kernels.quantize_reference import (
  quantize_int8_block_reference as quantize_int8_block_reference,
)


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
  """Program tiles where the scale tile does not fix them.

  ``rows`` x ``cols`` programs serve per-row and per-tensor scales;
  ``rows`` x G programs serve 1 x G groups. S x S blocks use S x S.
  """

  rows: int = 64
  cols: int = 256
  num_warps: int = 4
  num_stages: int = 1


DEFAULT_CONFIG = QuantizeConfig()


def _fused_kernel(*refs, layout, grid, stochastic, transpose):
  """Absmax, scale and codes of whole S x S, 1 x G or G x 1 tiles."""
  x_ref, *refs = refs
  seed_ref = refs.pop(0) if stochastic else None
  q_ref, s_ref, *transposed = refs
  row, col, mask = L.tile_coordinates(layout.rows, layout.cols, layout.shape)
  x = L.load(x_ref, mask).astype(jnp.float32)
  absmax, ok = finite_absmax(x, axis=layout.reduce_axes, keepdims=True)
  scale, inverse = tile_scale(absmax, ok, grid.qmax)
  codes = L.tile_codes(
    x, inverse, ok, row, col, layout.shape[1], seed_ref, grid
  )
  L.store(q_ref, codes, mask)
  _store_scales(s_ref, scale, layout, row, col)
  if transpose:
    qt_ref, st_ref = transposed
    L.store(qt_ref, codes.T, mask.T)
    st_ref[...] = scale


def _store_scales(s_ref, scale, layout, row, col) -> None:
  mask = layout.scale_mask(row, col)
  if mask is None:
    s_ref[...] = scale
  else:
    L.store(s_ref, scale, mask)


def _load_scales(s_ref, layout, row, col, other) -> Array:
  mask = layout.scale_mask(row, col)
  return s_ref[...] if mask is None else L.load(s_ref, mask, other)


def _absmax_kernel(x_ref, out_ref, *, layout):
  """Stage 1 of per-row/per-tensor scales: max |x| of every (row, tile).

  A NaN or inf is written as inf, which any later max keeps.
  """
  row, _, mask = L.tile_coordinates(layout.rows, layout.cols, layout.shape)
  x = L.load(x_ref, mask).astype(jnp.float32)
  absmax, ok = finite_absmax(x, axis=1, keepdims=True)
  L.store(out_ref, jnp.where(ok, absmax, jnp.inf), row < layout.shape[1])


def _scaled_kernel(*refs, layout, grid, stochastic, transpose):
  """Codes of a tile whose reciprocal scales (per row, or one) are given."""
  x_ref, inv_ref, *refs = refs
  seed_ref = refs.pop(0) if stochastic else None
  q_ref, *qt_ref = refs
  row, col, mask = L.tile_coordinates(layout.rows, layout.cols, layout.shape)
  x = L.load(x_ref, mask).astype(jnp.float32)
  inverse = _load_scales(inv_ref, layout, row, col, 1.0)
  ok = inverse <= F32_MAX  # False for the NaN of a poisoned scale
  codes = L.tile_codes(
    x, inverse, ok, row, col, layout.shape[1], seed_ref, grid
  )
  L.store(q_ref, codes, mask)
  if transpose:
    L.store(qt_ref[0], codes.T, mask.T)


def _transposed_out(x_shape, rows, cols, dtype):
  """(struct, spec) of the (B, K, M) codes of (rows, cols) program tiles."""
  b, m, k = x_shape
  spec = pl.BlockSpec((None, cols, rows), lambda b, i, j: (b, j, i))
  return L.out_struct((b, k, m), dtype), spec


def _run(kernel, layout, config, interpret, name, args, in_specs, outs):
  """One pallas_call over ``layout``'s grid; ``outs`` = [(struct, spec)]."""
  return L.call(
    kernel,
    grid=layout.grid,
    in_specs=in_specs,
    outs=outs,
    tuning=(config.num_warps, config.num_stages),
    interpret=interpret,
    name=name,
    args=args,
  )


def _seeded(args, in_specs, seed):
  if seed is not None:
    args.append(seed)
    in_specs.append(pl.BlockSpec((1,), lambda b, i, j: (0,)))
  return args, in_specs


@functools.partial(
  jax.jit,
  static_argnames=("grid", "layout", "transpose", "config", "interpret"),
)
def _quantize_fused(x, seed, *, grid, layout, transpose, config, interpret):
  args, in_specs = _seeded([x], [layout.tile_spec()], seed)
  outs = [
    (L.out_struct(x.shape, grid.dtype), layout.tile_spec()),
    (L.out_struct(layout.scale_shape, jnp.float32), layout.scale_spec()),
  ]
  if transpose:
    b, _, _ = x.shape
    _, nm, nk = layout.scale_shape
    flip = lambda b, i, j: (b, j, i)  # noqa: E731
    outs += [
      _transposed_out(x.shape, layout.rows, layout.cols, grid.dtype),
      (
        L.out_struct((b, nk, nm), jnp.float32),
        pl.BlockSpec((None, 1, 1), flip),
      ),
    ]
  kernel = functools.partial(
    _fused_kernel,
    layout=layout,
    grid=grid,
    stochastic=seed is not None,
    transpose=transpose,
  )
  name = "lpj_quantize_int8_block" if grid.is_int8 else "lpj_quantize_fp8"
  return _run(kernel, layout, config, interpret, name, args, in_specs, outs)


@functools.partial(
  jax.jit,
  static_argnames=("grid", "layout", "transpose", "config", "interpret"),
)
def _quantize_two_stage(x, seed, *, grid, layout, transpose, config, interpret):
  b, m, _ = x.shape
  partial_shape = (b, m, layout.grid[2])
  (partial,) = _run(
    functools.partial(_absmax_kernel, layout=layout),
    layout,
    config,
    interpret,
    "lpj_absmax",
    [x],
    [layout.tile_spec()],
    [
      (
        L.out_struct(partial_shape, jnp.float32),
        pl.BlockSpec((None, layout.rows, 1), lambda b, i, j: (b, i, j)),
      )
    ],
  )
  if layout.kind is tiles.TileKind.ROWS:
    absmax = jnp.max(partial, axis=2, keepdims=True)
  else:
    absmax = jnp.max(partial).reshape(1, 1, 1)
  scale, inverse = reduced_tile_scale(absmax, grid.qmax)
  args, in_specs = _seeded(
    [x, inverse], [layout.tile_spec(), layout.scale_spec()], seed
  )
  kernel = functools.partial(
    _scaled_kernel,
    layout=layout,
    grid=grid,
    stochastic=seed is not None,
    transpose=transpose,
  )
  outs = [(L.out_struct(x.shape, grid.dtype), layout.tile_spec())]
  if transpose:
    outs.append(_transposed_out(x.shape, layout.rows, layout.cols, grid.dtype))
  q, *q_t = _run(
    kernel, layout, config, interpret, "lpj_quantize_fp8", args, in_specs, outs
  )
  return (q, scale, q_t[0], scale) if transpose else (q, scale)


def _quantize(x, seed, grid, layout, transpose, config, interpret):
  """The fused kernel for whole scale tiles per program, else two stages."""
  run = _quantize_fused if layout.fused else _quantize_two_stage
  return run(
    x,
    seed,
    grid=grid,
    layout=layout,
    transpose=transpose,
    config=config,
    interpret=resolve_interpret(interpret),
  )


def _int8_layout(x, block) -> L.TileLayout:
  C.check_array("x", x, C.FLOAT_DTYPES)
  tiles.check_block(block)
  return L.tile_layout(x.shape, (block, block), block, block)


# Quantize and dequantize kernels serve the same tiles.
unsupported_tile_reason = L.unsupported_tile_reason
unsupported_dequantize_reason = L.unsupported_tile_reason


def unsupported_dual_reason(row_tile, column_tile, rounding) -> str | None:
  """Two tiles of one x are two quantize kernels here."""
  return (
    "the portable kernels quantize to two tiles with two kernels; got "
    f"{row_tile!r} and {column_tile!r}"
  )


def unsupported_requantize_reason(in_tile, tile) -> str | None:
  """Requantization here is dequantize, then quantize (two kernels)."""
  return (
    "the portable kernels requantize by dequantize + quantize; got "
    f"{in_tile!r} -> {tile!r}"
  )


def unsupported_transpose_reason(tile) -> str | None:
  """Why no kernel here writes the codes of ``tile`` transposed too."""
  if tile is None or tiles.kind_of(tile) is tiles.TileKind.BLOCKS:
    return None
  return (
    "the quantize kernels write transposed codes for tile None "
    f"(per-tensor) and (S, S); got {tile!r}"
  )


def quantize_int8_block(
  x: Array,
  *,
  block: int,
  rounding: str = "nearest",
  seed=None,
  transpose: bool = False,
  interpret: bool | None = None,
  config: QuantizeConfig = DEFAULT_CONFIG,
):
  """INT8 codes and scales of ``block`` x ``block`` tiles of x (B, M, K).

  Returns ``(q, s)``: int8 (B, M, K) and f32 (B, cdiv(M, S), cdiv(K, S));
  with ``transpose=True`` also ``(q_t, s_t)``, the same quantization laid
  out as (B, K, M) and (B, cdiv(K, S), cdiv(M, S)), written by the same
  kernel. ``seed`` (a uint32 scalar) is required for stochastic rounding.
  """
  layout = _int8_layout(x, block)
  seed = C.seed_array(seed, rounding)
  return _quantize(
    x, seed, NumberGrid.int8(), layout, transpose, config, interpret
  )


def quantize_fp8(
  x: Array,
  *,
  dtype,
  tile,
  rounding: str = "nearest",
  seed=None,
  transpose: bool = False,
  interpret: bool | None = None,
  config: QuantizeConfig = DEFAULT_CONFIG,
):
  """FP8 codes of ``dtype`` and f32 scales of x (B, M, K) over ``tile``.

  ``tile``: None (per-tensor, scale (1, 1, 1)), (1, None) (per-row,
  (B, M, 1)), (1, G) (groups along K, (B, M, cdiv(K, G))) or (S, S)
  (blocks, (B, cdiv(M, S), cdiv(K, S))). Returns ``(q, s)``; with
  ``transpose=True`` (tiles None and (S, S)) also ``(q_t, s_t)``, the same
  quantization laid out as (B, K, M), written by the same kernel.
  """
  C.check_array("x", x, C.FLOAT_DTYPES)
  grid = fp8_grid(dtype)
  layout = L.tile_layout(x.shape, tile, config.rows, config.cols)
  if transpose and unsupported_transpose_reason(tile):
    raise NotImplementedError(unsupported_transpose_reason(tile))
  seed = C.seed_array(seed, rounding)
  return _quantize(x, seed, grid, layout, transpose, config, interpret)


def _dequantize_kernel(q_ref, s_ref, out_ref, *, layout):
  row, col, mask = L.tile_coordinates(layout.rows, layout.cols, layout.shape)
  q = L.load(q_ref, mask).astype(jnp.float32)
  scale = _load_scales(s_ref, layout, row, col, 0.0)
  L.store(out_ref, q * scale, mask)


def dequantize(
  q: Array,
  s: Array,
  *,
  tile,
  out_dtype=jnp.float32,
  interpret: bool | None = None,
  config: QuantizeConfig = DEFAULT_CONFIG,
) -> Array:
  """``q * s`` per tile (computed in f32), cast to ``out_dtype``."""
  C.check_array("q", q, C.CODE_DTYPES)
  layout = L.tile_layout(q.shape, tile, config.rows, config.cols)
  what = f"q of shape {tuple(q.shape)} and tile {tile!r}"
  C.check_scales("s", s, layout.scale_shape, what)
  out_dtype = C.check_out_dtype(out_dtype)
  return _dequantize(
    q,
    s,
    layout=layout,
    out_dtype=out_dtype,
    config=config,
    interpret=resolve_interpret(interpret),
  )


@functools.partial(
  jax.jit, static_argnames=("layout", "out_dtype", "config", "interpret")
)
def _dequantize(q, s, *, layout, out_dtype, config, interpret):
  outs = [(L.out_struct(q.shape, out_dtype), layout.tile_spec())]
  kernel = functools.partial(_dequantize_kernel, layout=layout)
  in_specs = [layout.tile_spec(), layout.scale_spec()]
  (out,) = _run(
    kernel, layout, config, interpret, "lpj_dequantize", [q, s], in_specs, outs
  )
  return out
