"""Quantize and dequantize on Hopper (Mosaic GPU): the ``"mosaic"`` twins.

Same contracts and bits as :mod:`pallas_kernels.quantize` (and so as
``lowprec_jax.formats.quantize``): for x (B, M, K), a scale tile and the
grid maximum ``qmax``,

    scale = clip(absmax * RN(1 / qmax), 2^-126, max_scale)   (1 if absmax
            is 0; NaN, with codes 0, if the tile holds NaN or inf)
    q     = round(x * RN(1 / scale))   RTN, or SR with the shared hash at
                                       the global (b * M + m, k)

Each CTA (one warpgroup) copies a ``block x cols`` band of x into SMEM with
TMA, walks its ``block x block`` sub-blocks in registers (a max reduction
over the block, then elementwise), writes codes into SMEM and stores the
band with TMA; scales are stored directly, one scalar per block. A
sub-block is read from SMEM in windows of at most ``SLICE_ELEMENTS``
(32 values per thread): once for its maximum, once more for its codes, so a
128 x 128 block never holds 128 (or, with its transpose, 256) live
registers per thread (``_Pieces``). With ``transpose=True`` (INT8 and FP8
``(S, S)`` blocks, FP8 per-tensor) the same program also reads each window
transposed from SMEM and writes its codes, hashed at their original
coordinates, to ``q_t`` (B, K, M): the same quantization, so a backward
GEMM that wants the transposed codes reads them instead of a transpose.

Blocks from 64 on (and the per-tensor stages) keep the band and the codes
in swizzled SMEM and read 64 x 64 windows in the WGMMA layout, straight or
transposed; Mosaic GPU only lowers such transfers when it finds a
bank-conflict-free pattern. 32-blocks, and an f32 x read transposed (no
transposed WGMMA-layout load of 32-bit swizzled SMEM), use plain SMEM and
the strided layout, whose transposed read is column-strided: the 32 lanes
of a warp hit one bank. The transposed codes are recomputed from x^T
rather than transposed in registers: the same arithmetic on the same
values, a few ALU operations per element in a kernel bound by HBM.
``RN(1 / scale)`` is ``1 / scale`` corrected exactly (``numerics.divided_reciprocal``):
Mosaic GPU's ``/`` is ``div.full.f32``.

Tiles: INT8 and FP8 ``(S, S)`` blocks in one pass; FP8 per-tensor (``None``)
in two stages (a kernel writes every block's finite max, or inf for NaN/inf;
XLA reduces that small array and computes the scale; a kernel applies it).
FP8 per-row ``(1, None)``, ``(1, G)`` and ``(G, 1)`` run the row/column
reductions of :mod:`._grouped`. Ragged shapes are zero-padded to whole CTA
bands (zeros change no maximum; the padding is sliced off); aligned shapes
copy nothing. ``dequantize`` serves None and ``(S, S)`` tiles.
"""

import dataclasses
import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import Array, lax

from pallas_kernels import checks as C
from pallas_kernels import tiles
from pallas_kernels._common import cdiv
from pallas_kernels.mosaic import _dual, _grouped, _hw
from pallas_kernels.mosaic._dequantize import dequantize_blocks
from pallas_kernels.numerics import (
  F32_MAX,
  NumberGrid,
  divided_reciprocal,
  random_bits,
  reduced_tile_scale,
  tile_scale,
  uniform_from_bits,
)
from pallas_kernels.quantize_reference import fp8_grid

TENSOR_BLOCK = 64  # program sub-block of the per-tensor stages
BAND_ELEMENTS = 8192  # elements per CTA band (block x cols), at least
SLICE_ELEMENTS = 4096  # elements of x in registers at once (32 per thread)
TILED_BLOCK = 64  # blocks from this size are read in the WGMMA layout
TILE_WIDTH = 64  # rows and columns of a WGMMA-layout window


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
  """CTA band width: ``cols`` columns (a multiple of the block), or None
  for ``max(block, BAND_ELEMENTS // block)``."""

  cols: int | None = None

  def band_cols(self, block: int) -> int:
    cols = self.cols or max(block, BAND_ELEMENTS // block)
    if cols % block or cols > 256:
      raise ValueError(
        f"QuantizeConfig.cols={cols} must be a multiple of the {block}-wide "
        "block and at most 256 (the TMA box limit)"
      )
    return cols


DEFAULT_CONFIG = QuantizeConfig()


@dataclasses.dataclass(frozen=True)
class BandPlan(_grouped.BandGeometry):
  """Static description of one kernel launch over (B, M, K)."""

  mode: str  # "fused" (S x S scales), "absmax" or "apply" (per-tensor)
  shape: tuple[int, int, int]  # the unpadded x
  block: int
  cols: int
  grid: NumberGrid | None = None
  stochastic: bool = False
  transpose: bool = False

  @property
  def band_rows(self) -> int:
    return self.block

  @property
  def scale_grid(self) -> tuple[int, int, int]:
    b, m, k = self.padded
    return b, m // self.block, k // self.block


def strided(shape: tuple[int, int], vec: int | None = None):
  """The strided warpgroup layout of a (rows, cols) tile; ``vec`` elements
  per access (default: as wide as the tile allows, at most 8)."""
  rows, cols = shape
  vec = vec or min(8, rows * cols // 128)
  return plgpu.Layout.WG_STRIDED((rows, cols), vec_size=vec)


def _coordinates(plan: BandPlan, row0, col0, x, layout, transposed, batch):
  """Global hash counters (b * M + m, k) of the elements of ``x``, a tile of
  x at (row0, col0), or with ``transposed`` a tile of x^T whose first row
  is column col0 of x (uint32); ``batch`` is b (None: the launch's ``"b"``
  axis)."""
  along_rows = 1 if transposed else 0
  iota = lambda axis: plgpu.layout_cast(  # noqa: E731
    lax.broadcasted_iota(jnp.int32, x.shape, axis), layout
  )
  b = lax.axis_index("b") if batch is None else batch
  b = b.astype(jnp.uint32)
  row = (row0 + iota(along_rows)).astype(jnp.uint32)
  row = b * jnp.uint32(plan.shape[1] & 0xFFFFFFFF) + row
  return row, (col0 + iota(1 - along_rows)).astype(jnp.uint32)


def block_codes(
  plan, x, inverse, ok, seed, row0, col0, layout, transposed, batch=None
):
  """Codes of a tile ``x`` (f32, ``layout``) of one S x S block at
  (row0, col0) (see :func:`_coordinates`)."""
  u = None
  if plan.stochastic:
    row, col = _coordinates(plan, row0, col0, x, layout, transposed, batch)
    u = uniform_from_bits(random_bits(seed, row, col))
  # Zeroing y (not the 8-bit codes: Mosaic has no 8-bit arithmetic) gives
  # the reference's zero codes of a poisoned tile under both roundings.
  return plan.grid.round(jnp.where(ok, x * inverse, 0.0), u)


def _max_or_inf(x, tiled: bool = False):
  """max |x| of a tile, inf if it holds NaN or inf (one max reduction; a
  WGMMA-layout tile reduces its rows, then the row maxima)."""
  a = jnp.abs(x)
  a = jnp.where(a <= F32_MAX, a, jnp.inf)
  return jnp.max(jnp.max(a, axis=1), axis=0) if tiled else jnp.max(a)


def _finite_max(m):
  """(finite absmax, no NaN/inf) from :func:`_max_or_inf`'s value."""
  ok = m <= F32_MAX
  return jnp.where(ok, m, 0.0), ok


@dataclasses.dataclass(frozen=True)
class _Pieces:
  """How an S x S block is read from SMEM: in windows of at most
  ``SLICE_ELEMENTS`` (r0, c0, rows, cols), each read once for the block's
  maximum and again for its codes (and, transposed, for the codes of x^T).

  Tiled (:func:`_tiled`): the band sits in swizzled SMEM (``_band_smem``);
  windows are P x P squares read in the WGMMA layout, and read transposed
  for x^T, which Mosaic GPU lowers to bank-conflict-free transfers (it
  refuses a pattern that conflicts). Otherwise: plain SMEM, windows are row
  slices in the strided layout and, for x^T, column slices read
  column-strided (every lane of a warp in one bank: a 32-way conflict).
  """

  tiled: bool
  block: int
  size: int  # tiled: P; otherwise rows (columns of x^T) per slice

  @classmethod
  def of(cls, s: int, tiled: bool) -> "_Pieces":
    return cls(tiled, s, TILE_WIDTH if tiled else min(s, SLICE_ELEMENTS // s))

  def windows(self, transposed: bool) -> list[tuple[int, int, int, int]]:
    s, p = self.block, self.size
    if self.tiled:
      return [(r, c, p, p) for r in range(0, s, p) for c in range(0, s, p)]
    if transposed:
      return [(0, c, s, p) for c in range(0, s, p)]
    return [(r, 0, p, s) for r in range(0, s, p)]

  @property
  def layout(self):
    if self.tiled:
      return plgpu.Layout.WGMMA
    return strided((self.size, self.block))

  @property
  def flipped(self):
    if self.tiled:
      return plgpu.Layout.WGMMA
    return strided((self.size, self.block), 1)

  @staticmethod
  def at(ref, window, transposed: bool = False):
    """The window of an S x S ref, or with ``transposed`` the same window
    of its transpose (where a window's x^T codes go)."""
    r0, c0, rows, cols = window
    if transposed:
      return ref.at[pl.ds(c0, cols), pl.ds(r0, rows)]
    return ref.at[pl.ds(r0, rows), pl.ds(c0, cols)]

  def load(self, ref, window):
    view = self.at(ref, window)
    return plgpu.load(view, layout=self.layout).astype(jnp.float32)

  def load_transposed(self, ref, window):
    """The window's x^T (cols x rows)."""
    view = self.at(ref, window).T
    return plgpu.load(view, layout=self.flipped).astype(jnp.float32)


def _tiled(plan: BandPlan, x_dtype) -> bool:
  """Whether the band is read in the WGMMA layout (see ``_Pieces``):
  blocks from ``TILED_BLOCK`` on, except an f32 x read transposed (Mosaic
  GPU has no transposed WGMMA-layout load of 32-bit swizzled SMEM)."""
  wide = jnp.dtype(x_dtype).itemsize > 2
  return plan.block >= TILED_BLOCK and not (plan.transpose and wide)


def _band_smem(shape, dtype, tiled: bool, width: int):
  """SMEM of a band (or its codes): swizzled when tiled, so that
  ``width``-column pieces are whole swizzle tiles; plain otherwise."""
  if tiled:
    return _grouped.swizzled(shape, dtype, width)
  return plgpu.SMEM(shape, dtype)


def _kernel(*refs, plan: BandPlan):
  """One CTA: a ``block x cols`` band of x (see the module docstring)."""
  refs = list(refs)
  x_g = refs.pop(0)
  inv_g = refs.pop(0) if plan.mode == "apply" else None
  seed_g = refs.pop(0) if plan.stochastic else None
  s, cols = plan.block, plan.cols
  bi, i, j = (lax.axis_index(n) for n in ("b", "i", "j"))
  rows_g, cols_g = pl.ds(i * s, s), pl.ds(j * cols, cols)
  if plan.mode == "absmax":
    m_g, x_s, bar = refs
  else:  # outputs q, s (fused), q_t (transpose); then the scratch
    q_g = refs.pop(0)
    s_g = refs.pop(0) if plan.mode == "fused" else None
    qt_g = refs.pop(0) if plan.transpose else None
    x_s, q_s = refs.pop(0), refs.pop(0)
    qt_s = refs.pop(0) if plan.transpose else None
    (bar,) = refs
  plgpu.copy_gmem_to_smem(x_g.at[bi, rows_g, cols_g], x_s, bar)
  plgpu.barrier_wait(bar)
  seed = None if seed_g is None else seed_g[0]
  if plan.mode == "apply":
    inverse = inv_g[0]
    ok = inverse <= F32_MAX
  pieces = _Pieces.of(s, _tiled(plan, x_g.dtype))
  for t in range(cols // s):
    sub = pl.ds(t * s, s)
    block_s = x_s.at[:, sub]
    block_j = j * (cols // s) + t
    if plan.mode in ("absmax", "fused"):
      m = None
      for window in pieces.windows(False):
        w = _max_or_inf(pieces.load(block_s, window), pieces.tiled)
        m = w if m is None else jnp.maximum(m, w)
      if plan.mode == "absmax":
        m_g[bi, i, block_j] = m
        continue
      absmax, ok = _finite_max(m)
      scale, inverse = tile_scale(
        absmax, ok, plan.grid.qmax, reciprocal=divided_reciprocal
      )
      s_g[bi, i, block_j] = scale
    row0, col0 = i * s, j * cols + t * s
    for window in pieces.windows(False):
      pieces.at(q_s.at[:, sub], window)[...] = block_codes(
        plan,
        pieces.load(block_s, window),
        inverse,
        ok,
        seed,
        row0 + window[0],
        col0 + window[1],
        pieces.layout,
        False,
      )
    if plan.transpose:
      for window in pieces.windows(True):
        pieces.at(qt_s.at[sub], window, transposed=True)[...] = block_codes(
          plan,
          pieces.load_transposed(block_s, window),
          inverse,
          ok,
          seed,
          row0 + window[0],
          col0 + window[1],
          pieces.flipped,
          True,
        )
  if plan.mode == "absmax":
    return
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(q_s, q_g.at[bi, rows_g, cols_g])
  if plan.transpose:
    plgpu.copy_smem_to_gmem(qt_s, qt_g.at[bi, cols_g, rows_g])
  plgpu.wait_smem_to_gmem(0)


def _launch(plan: BandPlan, args, interpret, name):
  b, m, k = plan.padded
  s, cols = plan.block, plan.cols
  x_dtype = args[0].dtype
  code = None if plan.grid is None else plan.grid.dtype
  f32 = jnp.float32
  tiled = _tiled(plan, x_dtype)
  x_smem = _band_smem((s, cols), x_dtype, tiled, TILE_WIDTH)
  if plan.mode == "absmax":
    outs = [jax.ShapeDtypeStruct(plan.scale_grid, f32)]
    scratch = [x_smem]
  else:
    outs = [jax.ShapeDtypeStruct((b, m, k), code)]
    scratch = [x_smem, _band_smem((s, cols), code, tiled, TILE_WIDTH)]
    if plan.mode == "fused":
      outs.append(jax.ShapeDtypeStruct(plan.scale_grid, f32))
    if plan.transpose:
      outs.append(jax.ShapeDtypeStruct((b, k, m), code))
      scratch.append(_band_smem((cols, s), code, tiled, TILE_WIDTH))
  scratch.append(plgpu.Barrier(num_arrivals=1))
  return _hw.launch_band(
    _kernel, plan, outs, scratch, args, interpret=interpret, name=name
  )


@functools.partial(jax.jit, static_argnames=("plan", "interpret"))
def _quantize_blocks(x, seed, *, plan: BandPlan, interpret):
  args = [plan.pad(x)] + ([] if seed is None else [seed])
  name = "lpj_mosaic_quantize_" + ("int8" if plan.grid.is_int8 else "fp8")
  name += "_transpose" if plan.transpose else ""
  outs = _launch(plan, args, interpret, name)
  b, m, k = plan.shape
  nm, nk = cdiv(m, plan.block), cdiv(k, plan.block)
  q, s = outs[0][:, :m, :k], outs[1][:, :nm, :nk]
  if not plan.transpose:
    return q, s
  return q, s, outs[2][:, :k, :m], jnp.swapaxes(s, 1, 2)


@functools.partial(jax.jit, static_argnames=("plan", "interpret"))
def _quantize_tensor(x, seed, *, plan: BandPlan, interpret):
  """Per-tensor scale: block maxima, their max in XLA, then the codes."""
  x = plan.pad(x)
  stage1 = dataclasses.replace(
    plan, mode="absmax", stochastic=False, transpose=False
  )
  (maxima,) = _launch(stage1, [x], interpret, "lpj_mosaic_absmax")
  absmax = jnp.max(maxima).reshape(1, 1, 1)
  scale, inverse = reduced_tile_scale(absmax, plan.grid.qmax)
  args = [x, inverse.reshape(1)] + ([] if seed is None else [seed])
  name = "lpj_mosaic_quantize_fp8" + ("_transpose" if plan.transpose else "")
  q, *q_t = _launch(plan, args, interpret, name)
  b, m, k = plan.shape
  if not plan.transpose:
    return q[:, :m, :k], scale
  return q[:, :m, :k], scale, q_t[0][:, :k, :m], scale


def _block_plan(x, block, grid, seed, transpose, config) -> BandPlan:
  return BandPlan(
    mode="fused",
    shape=tuple(x.shape),
    block=block,
    cols=config.band_cols(block),
    grid=grid,
    stochastic=seed is not None,
    transpose=transpose,
  )


def quantize_int8_block(
  x: Array,
  *,
  block: int,
  rounding: str = "nearest",
  seed=None,
  transpose: bool = False,
  interpret=None,
  config: QuantizeConfig = DEFAULT_CONFIG,
):
  """INT8 codes and scales of ``block`` x ``block`` tiles of x (B, M, K).

  Returns ``(q, s)`` or, with ``transpose=True``, ``(q, s, q_t, s_t)``
  (the contract of :func:`pallas_kernels.quantize.quantize_int8_block`).
  """
  C.check_array("x", x, C.FLOAT_DTYPES)
  tiles.check_block(block)
  seed = C.seed_array(seed, rounding)
  plan = _block_plan(x, block, NumberGrid.int8(), seed, transpose, config)
  return _quantize_blocks(x, seed, plan=plan, interpret=interpret)


def _square_block(tile) -> int | None:
  """S for an (S, S) tile with S in ``tiles.BLOCK_SIZES``, else None."""
  if (
    tiles.kind_of(tile) is tiles.TileKind.BLOCKS
    and tile[0] in tiles.BLOCK_SIZES
  ):
    return tile[0]
  return None


def _tensor_or_square_reason(what: str, tile) -> str | None:
  """Why ``what`` (served for per-tensor and S x S tiles) cannot serve
  ``tile`` (None: it can)."""
  if tile is None or _square_block(tile):
    return None
  return (
    f"{what} tile None (per-tensor) and (S, S) with S in "
    f"{tiles.BLOCK_SIZES}; got tile {tile!r}"
  )


def unsupported_transpose_reason(tile) -> str | None:
  """Why no kernel here writes the codes of ``tile`` transposed too."""
  return _tensor_or_square_reason(
    "the Mosaic GPU quantize kernels write transposed codes for", tile
  )


def unsupported_dequantize_reason(tile) -> str | None:
  """Why the Mosaic dequantize kernel cannot serve ``tile``."""
  return _tensor_or_square_reason(
    "the Mosaic GPU dequantize kernel serves", tile
  )


def unsupported_tile_reason(tile) -> str | None:
  """Why the Mosaic FP8 quantize kernels cannot serve ``tile``."""
  if unsupported_dequantize_reason(tile) is None:
    return None
  if _grouped.unsupported_reason(tile) is None:
    return None
  return (
    f"tile {tile!r} has no quantize kernel in Mosaic GPU; supported: None "
    f"(per-tensor), (S, S) with S in {tiles.BLOCK_SIZES}, (1, None) "
    f"(per-row), (1, G) with G in {_grouped.GROUPS} and (G, 1) with G in "
    f"{_grouped.COLUMN_GROUPS}"
  )


def _check_tile(tile, reason) -> None:
  tiles.kind_of(tile)  # ValueError for a malformed tile
  if reason(tile):
    raise NotImplementedError(reason(tile))


def quantize_fp8(
  x: Array,
  *,
  dtype,
  tile,
  rounding: str = "nearest",
  seed=None,
  transpose: bool = False,
  interpret=None,
  config: QuantizeConfig = DEFAULT_CONFIG,
):
  """FP8 codes of ``dtype`` and f32 scales of x (B, M, K) over ``tile``
  (None, (S, S), (1, None), (1, G) or (G, 1)); the contract of
  :func:`pallas_kernels.quantize.quantize_fp8`. Returns ``(q, s)``, or
  with ``transpose=True`` (tiles None and (S, S)) ``(q, s, q_t, s_t)``. The
  band width of ``config`` applies to None and (S, S) tiles."""
  C.check_array("x", x, C.FLOAT_DTYPES)
  grid = fp8_grid(dtype)
  _check_tile(tile, unsupported_tile_reason)
  if transpose:
    _check_tile(tile, unsupported_transpose_reason)
  seed = C.seed_array(seed, rounding)
  if tile is not None and not _square_block(tile):
    plan = _grouped.plan_for(tile, x.shape, grid, seed is not None)
    run = _grouped.quantize_rows if plan.mode == "apply" else None
    run = run or _grouped.quantize_grouped
    return run(x, seed, plan=plan, interpret=interpret)
  if tile is None:
    plan = _block_plan(x, TENSOR_BLOCK, grid, seed, transpose, config)
    plan = dataclasses.replace(plan, mode="apply")
    return _quantize_tensor(x, seed, plan=plan, interpret=interpret)
  plan = _block_plan(x, tile[0], grid, seed, transpose, config)
  return _quantize_blocks(x, seed, plan=plan, interpret=interpret)


def unsupported_dual_reason(row_tile, column_tile, rounding) -> str | None:
  """Why no kernel here quantizes x to both tiles in one read."""
  return _dual.unsupported_reason(row_tile, column_tile, rounding)


def quantize_fp8_dual(
  x: Array,
  *,
  dtype,
  row_tile,
  column_tile,
  rounding: str = "nearest",
  interpret=None,
):
  """``(quantize_fp8(x, tile=row_tile), quantize_fp8(x, tile=column_tile))``
  bit for bit, from one read of x (see :mod:`._dual`)."""
  C.check_array("x", x, C.FLOAT_DTYPES)
  reason = unsupported_dual_reason(row_tile, column_tile, rounding)
  if reason:
    raise NotImplementedError(reason)
  plan = _dual.DualPlan(shape=tuple(x.shape), grid=fp8_grid(dtype))
  return _dual.quantize_dual(x, plan=plan, interpret=interpret)


def unsupported_requantize_reason(in_tile, tile) -> str | None:
  """Why no kernel here requantizes FP8 codes of ``in_tile`` to ``tile``."""
  return _grouped.unsupported_requantize_reason(in_tile, tile)


def requantize_fp8(
  q: Array,
  s: Array,
  *,
  in_tile,
  dtype,
  tile,
  rounding: str = "nearest",
  seed=None,
  interpret=None,
):
  """``quantize_fp8(dequantize(q, s, tile=in_tile), dtype=dtype, tile=tile)``
  bit for bit, in one kernel that dequantizes in registers (no f32 copy in
  HBM): FP8 codes ``q`` (B, M, K) with (1, G_in) scales to (G, 1) groups
  (see :func:`unsupported_requantize_reason`). Returns ``(q, s)``."""
  C.check_array("q", q, C.FP8_DTYPES)
  what = f"q of shape {tuple(q.shape)} and tile {in_tile!r}"
  C.check_scales("s", s, tiles.scale_shape(q.shape, in_tile), what)
  reason = unsupported_requantize_reason(in_tile, tile)
  if reason:
    raise NotImplementedError(reason)
  seed = C.seed_array(seed, rounding)
  plan = _grouped.requantize_plan(
    in_tile, tile, q.shape, fp8_grid(dtype), seed is not None
  )
  return _grouped.requantize_columns(q, s, seed, plan=plan, interpret=interpret)


def dequantize(
  q: Array,
  s: Array,
  *,
  tile,
  out_dtype=jnp.float32,
  interpret=None,
  config: QuantizeConfig = DEFAULT_CONFIG,
) -> Array:
  """``q * s`` per tile (in f32), cast to ``out_dtype``; tile None or
  (S, S) (the contract of :func:`pallas_kernels.quantize.dequantize`)."""
  C.check_array("q", q, C.CODE_DTYPES)
  _check_tile(tile, unsupported_dequantize_reason)
  what = f"q of shape {tuple(q.shape)} and tile {tile!r}"
  C.check_scales("s", s, tiles.scale_shape(q.shape, tile), what)
  out_dtype = C.check_out_dtype(out_dtype)
  block = TENSOR_BLOCK if tile is None else tile[0]
  return dequantize_blocks(
    q,
    s,
    block=block,
    cols=config.band_cols(block),
    per_tensor=tile is None,
    out_dtype=out_dtype,
    interpret=interpret,
  )
