"""One read of x, two FP8 quantizations: 1 x G groups and G x 1 groups.

``fp8_block`` quantizes the gradient g twice: in 1 x 128 groups along N for
dlhs, and in 1 x 128 groups along M of g^T for drhs, which are 128 x 1
groups of g (their codes transposed afterwards). Two kernels read g twice;
this one reads a G x G band once, in four (G/2) x (G/2) windows of the
WGMMA layout from swizzled SMEM (as :mod:`._grouped`):

    pass 1: each window's row and column maxima (inf for NaN/inf), folded
            into the band's G row maxima and G column maxima;
    scales: ``tile_scale`` of each (exactly :mod:`pallas_kernels.quantize`);
    pass 2: each window's codes twice, ``x * RN(1 / s_row)`` and
            ``x * RN(1 / s_col)``, rounded to nearest.

Outputs are those of two ``quantize_fp8`` calls: codes (B, M, K) and
scales (B, M, K / G) for the rows, codes (B, M, K) and scales (B, M / G, K)
for the columns, bit for bit. Round-to-nearest only (``fp8_block`` is RTN);
stochastic rounding runs the two kernels.
"""

import dataclasses
import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.mosaic import _hw
from pallas_kernels.mosaic._grouped import BandGeometry, swizzled
from pallas_kernels.numerics import (
  F32_MAX,
  NumberGrid,
  divided_reciprocal,
  tile_scale,
)

GROUP = 128  # G: the band is G x G, its windows G/2 x G/2
WINDOW = GROUP // 2


@dataclasses.dataclass(frozen=True)
class DualPlan(BandGeometry):
  """One launch over x (B, M, K): G x G bands, one grid for both codes."""

  shape: tuple[int, int, int]
  grid: NumberGrid

  band_rows = GROUP
  cols = GROUP


def unsupported_reason(row_tile, column_tile, rounding: str) -> str | None:
  """Why no dual kernel serves these two tiles (None: one does)."""
  if (
    row_tile == (1, GROUP)
    and column_tile == (GROUP, 1)
    and rounding == "nearest"
  ):
    return None
  return (
    f"the Mosaic GPU dual quantize kernel serves (1, {GROUP}) and "
    f"({GROUP}, 1) groups with round-to-nearest; got {row_tile!r} and "
    f"{column_tile!r} with {rounding!r}"
  )


def _spread(v, axis):
  """A per-row (axis 1) or per-column (axis 0) vector over a window."""
  kept = (0,) if axis == 1 else (1,)
  shape = (WINDOW, WINDOW)
  return plgpu.layout_cast(
    lax.broadcast_in_dim(v, shape, kept), plgpu.Layout.WGMMA
  )


def _kernel(
  x_g, qr_g, sr_g, qc_g, sc_g, x_s, qr_s, qc_s, sr_s, sc_s, bar, *, plan
):
  """One CTA: a G x G band of x (see the module docstring)."""
  bi, i, j = (lax.axis_index(n) for n in ("b", "i", "j"))
  rows_g, cols_g = pl.ds(i * GROUP, GROUP), pl.ds(j * GROUP, GROUP)
  plgpu.copy_gmem_to_smem(x_g.at[bi, rows_g, cols_g], x_s, bar)
  plgpu.barrier_wait(bar)
  halves = range(GROUP // WINDOW)

  def at(ref, a, b):
    return ref.at[pl.ds(a * WINDOW, WINDOW), pl.ds(b * WINDOW, WINDOW)]

  def load(a, b):
    x = plgpu.load(at(x_s, a, b), layout=plgpu.Layout.WGMMA)
    return x.astype(jnp.float32)

  row_max, col_max = {}, {}
  for a in halves:
    for b in halves:
      m = jnp.abs(load(a, b))
      m = jnp.where(m <= F32_MAX, m, jnp.inf)
      r, c = jnp.max(m, axis=1), jnp.max(m, axis=0)
      row_max[a] = jnp.maximum(row_max[a], r) if a in row_max else r
      col_max[b] = jnp.maximum(col_max[b], c) if b in col_max else c

  def scales(m, out):
    """(1/scale, ok) vectors per half; the scales go to ``out`` (1, G)."""
    found = {}
    for h, v in m.items():
      ok = v <= F32_MAX
      scale, inverse = tile_scale(
        jnp.where(ok, v, 0.0),
        ok,
        plan.grid.qmax,
        reciprocal=divided_reciprocal,
      )
      out[0, pl.ds(h * WINDOW, WINDOW)] = scale
      found[h] = (inverse, ok)
    return found

  rows, cols = scales(row_max, sr_s), scales(col_max, sc_s)
  # One code array at a time (rounding onto the FP8 grid is register
  # hungry); each vector spread where used (2 registers, a window 32).
  # Zeroing y gives a poisoned group's zero codes (as _grouped).
  for q_s, found, axis in ((qr_s, rows, 1), (qc_s, cols, 0)):
    for a in halves:
      for b in halves:
        inverse, ok = found[a if axis == 1 else b]
        x = load(a, b)
        y = jnp.where(_spread(ok, axis), x * _spread(inverse, axis), 0.0)
        at(q_s, a, b)[...] = plan.grid.round(y, None)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(qr_s, qr_g.at[bi, rows_g, cols_g])
  plgpu.copy_smem_to_gmem(qc_s, qc_g.at[bi, rows_g, cols_g])
  plgpu.copy_smem_to_gmem(sr_s, sr_g.at[bi, pl.ds(j, 1), rows_g])
  plgpu.copy_smem_to_gmem(sc_s, sc_g.at[bi, pl.ds(i, 1), cols_g])
  plgpu.wait_smem_to_gmem(0)


@functools.partial(jax.jit, static_argnames=("plan", "interpret"))
def quantize_dual(x, *, plan: DualPlan, interpret):
  """((row codes, (B, M, K / G) scales), (column codes, (B, M / G, K)
  scales)) of x, from one read of it."""
  b, m, k = plan.padded
  code, f32 = plan.grid.dtype, jnp.float32
  outs = [
    jax.ShapeDtypeStruct((b, m, k), code),
    jax.ShapeDtypeStruct((b, k // GROUP, m), f32),  # K-group-major
    jax.ShapeDtypeStruct((b, m, k), code),
    jax.ShapeDtypeStruct((b, m // GROUP, k), f32),
  ]
  scratch = [
    swizzled((GROUP, GROUP), x.dtype, WINDOW),
    swizzled((GROUP, GROUP), code, WINDOW),
    swizzled((GROUP, GROUP), code, WINDOW),
    plgpu.SMEM((1, GROUP), f32),
    plgpu.SMEM((1, GROUP), f32),
    plgpu.Barrier(num_arrivals=1),
  ]
  qr, sr, qc, sc = _hw.launch_band(
    _kernel,
    plan,
    outs,
    scratch,
    [plan.pad(x)],
    interpret=interpret,
    name="lpj_mosaic_quantize_fp8_dual",
  )
  _, m, k = plan.shape
  groups_k, groups_m = -(-k // GROUP), -(-m // GROUP)
  sr = jnp.swapaxes(sr, 1, 2)[:, :m, :groups_k]
  return (qr[:, :m, :k], sr), (qc[:, :m, :k], sc[:, :groups_m, :k])
