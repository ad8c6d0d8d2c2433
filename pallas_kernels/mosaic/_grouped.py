"""FP8 quantize over rows and groups on Hopper: per-row, 1 x G and G x 1.

The scale tiles of these formats are thin: one scale per row (``(1, None)``),
per G consecutive elements of a row (``(1, G)``, the activations of
``fp8_block``) or of a column (``(G, 1)``). A CTA copies a ``rows x cols``
band of x into swizzled SMEM with TMA and loads it in the WGMMA register
layout, where a row is held by one quad of lanes and a column by the four
warps: ``max`` along axis 1 (rows) reduces in registers and lane shuffles,
along axis 0 (columns) across warps through SMEM scratch, and the result (a
WGMMA_ROW or WGMMA_COL vector) broadcasts back over the tile. So

    (1, G): band 64 x cols, one 64 x G sub-tile per group, reduced along 1
    (G, 1): band G x cols, reduced along 0
    (1, None): stage 1 writes each band's row maxima (the (1, cols) kernel
               without codes), XLA reduces them and computes the exact
               scales, stage 2 loads each band's reciprocal row scales
               (WGMMA_ROW) and writes the codes.

**Requantization** (``requantize_columns``): the (G, 1) kernel can read FP8
codes with (1, G_in) scales instead of a float x and dequantize them in
registers (``codes * scale`` in f32, exactly ``formats.dequantize``), which
is how ``fp8_block``'s weight gradient turns the saved 1 x 128 activations
into 128 x 1 groups without an f32 copy of x in HBM.

Scales and codes follow the contract of :mod:`pallas_kernels.quantize`
(``RN(1 / scale)`` corrected exactly, ``numerics.divided_reciprocal``; NaN/inf poison
their tile; SR hashed at the global ``(b * M + m, k)``). A band's scales go
out by TMA from a small SMEM row: the row scales of ``(1, G)`` are written
K-group-major, (B, K / G, M), and transposed by XLA (1/G of the codes' size).
Ragged shapes are zero-padded to whole bands (zeros change no maximum).
"""

import dataclasses
import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import Array, lax

from pallas_kernels.mosaic import _hw
from pallas_kernels.numerics import (
  F32_MAX,
  NumberGrid,
  divided_reciprocal,
  random_bits,
  reduced_tile_scale,
  tile_scale,
  uniform_from_bits,
)

ROW_BAND = 64  # rows of a (1, G) or per-row band: one WGMMA row tile
BAND_ELEMENTS = 8192  # elements per CTA band, at least
MAX_BOX = 256  # TMA box limit per dimension
MIN_COLS = 32  # 128-byte swizzle rows of f32, 32-byte rows of 8-bit codes
GROUPS = (32, 64, 128, 256)  # G of (1, G)
COLUMN_GROUPS = (64, 128, 256)  # G of (G, 1): whole WGMMA row tiles


class BandGeometry:
  """CTA bands of ``band_rows x cols`` over ``shape`` (B, M, K), with x
  zero-padded to whole bands (zeros change no maximum)."""

  shape: tuple[int, int, int]
  cols: int

  @property
  def band_rows(self) -> int:
    raise NotImplementedError

  @property
  def padded(self) -> tuple[int, int, int]:
    b, m, k = self.shape
    r, c = self.band_rows, self.cols
    return b, -(-m // r) * r, -(-k // c) * c

  @property
  def launch(self) -> tuple[int, int, int]:
    b, m, k = self.padded
    return b, m // self.band_rows, k // self.cols

  def pad(self, x: Array) -> Array:
    """x padded to whole bands; x itself (no copy) when aligned."""
    _, m, k = x.shape
    _, pm, pk = self.padded
    if (pm, pk) == (m, k):
      return x
    return jnp.pad(x, ((0, 0), (0, pm - m), (0, pk - k)))


@dataclasses.dataclass(frozen=True)
class GroupPlan(BandGeometry):
  """Static description of one launch over x (B, M, K).

  ``axis`` is the reduced axis of a sub-tile: 1 for row groups of ``group``
  columns (a ``rows x cols`` band holds ``cols // group`` of them), 0 for
  column groups of ``group == rows`` rows.
  """

  mode: str  # "fused", "absmax" (row maxima only) or "apply" (given 1/s)
  axis: int
  shape: tuple[int, int, int]
  group: int
  rows: int
  cols: int
  grid: NumberGrid | None = None
  stochastic: bool = False
  # x given as codes with (1, dequantize) scales (K-group-major, (B, K/G, M))
  dequantize: int | None = None

  @property
  def band_rows(self) -> int:
    return self.rows

  @property
  def sub_tiles(self) -> int:
    return self.cols // self.group if self.axis == 1 else 1

  @property
  def scale_shape(self) -> tuple[int, int, int]:
    """Scales as written: (B, K / G, M) for axis 1, (B, M / G, K) for 0."""
    b, m, k = self.padded
    if self.axis == 1:
      return b, k // self.group, m
    return b, m // self.group, k


def swizzled(shape, dtype, width: int) -> plgpu.SMEM:
  """SMEM for a band whose ``width``-column sub-tiles the WGMMA layout
  reads and writes without bank conflicts (swizzled rows of at most one
  sub-tile, so that a sub-tile is whole swizzle tiles)."""
  size = jnp.dtype(dtype).itemsize
  swizzle = min(128, width * size)
  transforms = (
    plgpu.TilingTransform((8, swizzle // size)),
    plgpu.SwizzleTransform(swizzle),
  )
  return plgpu.SMEM(shape, dtype, transforms=transforms)


def _max_along(x, axis):
  """(finite absmax, no NaN/inf) along ``axis`` of a WGMMA-layout tile."""
  a = jnp.abs(x)
  m = jnp.max(jnp.where(a <= F32_MAX, a, jnp.inf), axis=axis)
  ok = m <= F32_MAX
  return jnp.where(ok, m, 0.0), ok


def _spread(v, shape, axis):
  """A per-row (axis 1) or per-column (axis 0) vector over the tile."""
  kept = (0,) if axis == 1 else (1,)
  spread = lax.broadcast_in_dim(v, shape, kept)
  return plgpu.layout_cast(spread, plgpu.Layout.WGMMA)


def _uniforms(plan: GroupPlan, seed, row0, col0, shape):
  """SR uniforms at the global counters (b * M + m, k) of a tile."""
  iota = lambda axis: plgpu.layout_cast(  # noqa: E731
    lax.broadcasted_iota(jnp.int32, shape, axis), plgpu.Layout.WGMMA
  )
  b = lax.axis_index("b").astype(jnp.uint32)
  row = (row0 + iota(0)).astype(jnp.uint32)
  row = b * jnp.uint32(plan.shape[1] & 0xFFFFFFFF) + row
  col = (col0 + iota(1)).astype(jnp.uint32)
  return uniform_from_bits(random_bits(seed, row, col))


def _kernel(*refs, plan: GroupPlan):
  """One CTA: a ``rows x cols`` band of x (see the module docstring)."""
  refs = list(refs)
  x_g = refs.pop(0)
  # Per-row vectors of the band: 1/s ("apply") or the input codes' scales.
  row_g = refs.pop(0) if plan.mode == "apply" or plan.dequantize else None
  seed_g = refs.pop(0) if plan.stochastic else None
  if plan.mode == "absmax":
    m_g, x_s, s_s, bar = refs
  elif plan.mode == "apply":
    q_g, x_s, row_s, q_s, bar, row_bar = refs
  elif plan.dequantize:
    q_g, s_g, x_s, row_s, q_s, s_s, bar, row_bar = refs
  else:
    q_g, s_g, x_s, q_s, s_s, bar = refs
  r, c, g = plan.rows, plan.cols, plan.group
  bi, i, j = (lax.axis_index(n) for n in ("b", "i", "j"))
  rows_g, cols_g = pl.ds(i * r, r), pl.ds(j * c, c)
  plgpu.copy_gmem_to_smem(x_g.at[bi, rows_g, cols_g], x_s, bar)
  if row_g is not None:
    # "apply": (B, M); dequantize: (B, K / G_in, M), this band's group.
    row_src = (
      row_g.at[bi]
      if plan.mode == "apply"
      else row_g.at[bi, j * c // plan.dequantize]
    )
    plgpu.copy_gmem_to_smem(row_src.at[rows_g], row_s, row_bar)
    plgpu.barrier_wait(row_bar)
    row_values = plgpu.load(row_s, layout=plgpu.Layout.WGMMA.reduce(1))
  if plan.mode == "apply":
    inverse = row_values
    ok = inverse <= F32_MAX  # False for the NaN of a poisoned row
  plgpu.barrier_wait(bar)
  width = g if plan.axis == 1 else c
  for t in range(plan.sub_tiles):
    sub = pl.ds(t * width, width)
    x = plgpu.load(x_s.at[:, sub], layout=plgpu.Layout.WGMMA)
    x = x.astype(jnp.float32)
    if plan.dequantize:  # codes * scale, as formats.dequantize
      x = x * _spread(row_values, x.shape, 1)
    if plan.mode != "apply":
      absmax, ok = _max_along(x, plan.axis)
    if plan.mode == "absmax":
      s_s[t, :] = jnp.where(ok, absmax, jnp.inf)
      continue
    if plan.mode == "fused":
      scale, inverse = tile_scale(
        absmax, ok, plan.grid.qmax, reciprocal=divided_reciprocal
      )
      s_s[t, :] = scale
    y = x * _spread(inverse, x.shape, plan.axis)
    # Zeroing y (Mosaic has no 8-bit select) gives a poisoned tile's zero
    # codes under both roundings, as in the S x S kernel.
    y = jnp.where(_spread(ok, x.shape, plan.axis), y, 0.0)
    u = None
    if plan.stochastic:
      u = _uniforms(plan, seed_g[0], i * r, j * c + t * width, x.shape)
    q_s[:, sub] = plan.grid.round(y, u)
  plgpu.commit_smem()
  if plan.mode == "absmax":
    plgpu.copy_smem_to_gmem(s_s, m_g.at[bi, pl.ds(j, 1), rows_g])
  else:
    plgpu.copy_smem_to_gmem(q_s, q_g.at[bi, rows_g, cols_g])
  if plan.mode == "fused" and plan.axis == 1:
    groups = pl.ds(j * plan.sub_tiles, plan.sub_tiles)
    plgpu.copy_smem_to_gmem(s_s, s_g.at[bi, groups, rows_g])
  elif plan.mode == "fused":
    plgpu.copy_smem_to_gmem(s_s, s_g.at[bi, pl.ds(i, 1), cols_g])
  plgpu.wait_smem_to_gmem(0)


def _launch(plan: GroupPlan, args, interpret, name):
  b, m, k = plan.padded
  r, c = plan.rows, plan.cols
  f32 = jnp.float32
  code = None if plan.grid is None else plan.grid.dtype
  width = plan.group if plan.axis == 1 else c
  scratch = [swizzled((r, c), args[0].dtype, width)]
  scale_row = r if plan.axis == 1 else c
  if plan.mode == "absmax":
    outs = [jax.ShapeDtypeStruct(plan.scale_shape, f32)]
    scratch.append(plgpu.SMEM((1, r), f32))
  else:
    outs = [jax.ShapeDtypeStruct((b, m, k), code)]
    row_vector = plan.mode == "apply" or plan.dequantize
    if row_vector:
      scratch.append(plgpu.SMEM((r,), f32))
    scratch.append(swizzled((r, c), code, width))
    if plan.mode == "fused":
      outs.append(jax.ShapeDtypeStruct(plan.scale_shape, f32))
      scratch.append(plgpu.SMEM((plan.sub_tiles, scale_row), f32))
  scratch.append(plgpu.Barrier(num_arrivals=1))
  if plan.mode != "absmax" and row_vector:
    scratch.append(plgpu.Barrier(num_arrivals=1))
  return _hw.launch_band(
    _kernel, plan, outs, scratch, args, interpret=interpret, name=name
  )


def _band_cols(group: int, rows: int, axis: int) -> int:
  wanted = max(MIN_COLS, BAND_ELEMENTS // rows)
  if axis == 1:
    wanted = max(group, wanted // group * group)
  return min(MAX_BOX, wanted)


def plan_for(tile, shape, grid: NumberGrid, stochastic: bool) -> GroupPlan:
  """The plan of ``tile`` ((1, None), (1, G) or (G, 1)) over ``shape``."""
  tr, tc = tile
  if tile == (1, None):
    cols = _band_cols(MAX_BOX, ROW_BAND, 1)
    axis, group, rows, mode = 1, cols, ROW_BAND, "apply"
  elif tr == 1:
    axis, group, rows, mode = 1, tc, ROW_BAND, "fused"
    cols = _band_cols(group, rows, 1)
  else:
    axis, group, rows, mode = 0, tr, tr, "fused"
    cols = _band_cols(group, rows, 0)
  return GroupPlan(
    mode, axis, tuple(shape), group, rows, cols, grid, stochastic
  )


def unsupported_reason(tile) -> str | None:
  """Why no grouped kernel serves ``tile`` (None: one does)."""
  if tile == (1, None):
    return None
  if isinstance(tile, tuple) and len(tile) == 2:
    if tile[0] == 1 and tile[1] in GROUPS:
      return None
    if tile[1] == 1 and tile[0] in COLUMN_GROUPS:
      return None
  return (
    f"the Mosaic GPU row/group quantize kernels serve (1, None), (1, G) with "
    f"G in {GROUPS} and (G, 1) with G in {COLUMN_GROUPS}; got tile {tile!r}"
  )


@functools.partial(jax.jit, static_argnames=("plan", "interpret"))
def quantize_grouped(x, seed, *, plan: GroupPlan, interpret):
  """FP8 ``(q, s)`` of a fused (1, G) or (G, 1) plan."""
  args = [plan.pad(x)] + ([] if seed is None else [seed])
  q, s = _launch(plan, args, interpret, "lpj_mosaic_quantize_fp8_groups")
  b, m, k = plan.shape
  if plan.axis == 1:
    s = jnp.swapaxes(s, 1, 2)[:, :m, : -(-k // plan.group)]
  else:
    s = s[:, : -(-m // plan.group), :k]
  return q[:, :m, :k], s


def unsupported_requantize_reason(in_tile, tile) -> str | None:
  """Why no kernel requantizes FP8 codes of ``in_tile`` to ``tile``."""
  if (
    isinstance(in_tile, tuple)
    and in_tile[0] == 1
    and in_tile[1] in GROUPS
    and isinstance(tile, tuple)
    and tile[1] == 1
    and tile[0] in COLUMN_GROUPS
    and in_tile[1] % _band_cols(tile[0], tile[0], 0) == 0
  ):
    return None
  return (
    "the Mosaic GPU requantize kernel turns (1, G_in) FP8 codes into "
    f"(G, 1) groups (G_in in {GROUPS}, G in {COLUMN_GROUPS}, each band "
    f"inside one input group); got {in_tile!r} -> {tile!r}"
  )


def requantize_plan(in_tile, tile, shape, grid, stochastic) -> GroupPlan:
  """The (G, 1) plan over codes of (1, G_in) scales (see
  :func:`unsupported_requantize_reason`)."""
  plan = plan_for(tile, shape, grid, stochastic)
  return dataclasses.replace(plan, dequantize=in_tile[1])


@functools.partial(jax.jit, static_argnames=("plan", "interpret"))
def requantize_columns(q_in, s_in, seed, *, plan: GroupPlan, interpret):
  """FP8 ``(q, s)`` over (G, 1) groups of ``q_in * s_in`` ((1, G_in)
  scales, (B, M, cdiv(K, G_in))), dequantized in registers."""
  b, m, k = plan.shape
  _, pm, pk = plan.padded
  groups = -(-pk // plan.dequantize)
  s_in = jnp.pad(s_in, ((0, 0), (0, pm - m), (0, groups - s_in.shape[2])))
  args = [plan.pad(q_in), jnp.swapaxes(s_in, 1, 2)]
  args += [] if seed is None else [seed]
  q, s = _launch(plan, args, interpret, "lpj_mosaic_requantize_fp8_columns")
  return q[:, :m, :k], s[:, : -(-m // plan.group), :k]


@functools.partial(jax.jit, static_argnames=("plan", "interpret"))
def quantize_rows(x, seed, *, plan: GroupPlan, interpret):
  """Per-row FP8 ``(q, s)``: band row maxima, their max in XLA, codes."""
  x = plan.pad(x)
  stage1 = dataclasses.replace(plan, mode="absmax", stochastic=False)
  (maxima,) = _launch(stage1, [x], interpret, "lpj_mosaic_row_absmax")
  absmax = jnp.max(maxima, axis=1)  # (B, M): inf marks NaN/inf rows
  scale, inverse = reduced_tile_scale(absmax, plan.grid.qmax)
  args = [x, inverse] + ([] if seed is None else [seed])
  (q,) = _launch(plan, args, interpret, "lpj_mosaic_quantize_fp8_rows")
  b, m, k = plan.shape
  return q[:, :m, :k], scale[:, :m, None]
