"""Epilogues of the Hopper GEMM kernel: one warpgroup's fp32 output tile.

* :func:`store_tile`: cast to the output dtype in two SMEM slots, TMA stores
  (overlapped with the next tile).
* :func:`requantize_tile`: the INT8-out epilogue of ``int8_matmul``: the
  tile requantized in S x S blocks with the logic and bits of the Mosaic
  quantize kernel (Lane semantics only: the exact reciprocal bitcasts
  scalars).
"""

import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp

from pallas_kernels.mosaic._config import TuningConfig
from pallas_kernels.mosaic.quantize import BandPlan, block_codes, strided
from pallas_kernels.numerics import F32_MAX, divided_reciprocal, tile_scale


def store_tile(out, wg_out, slots, c: TuningConfig, out_dtype):
  """Epilogue: fp32 tile -> out dtype -> two SMEM slots -> TMA stores."""
  plgpu.wait_smem_to_gmem(0, wait_read_only=True)
  for e in range(c.tile_n // c.epi_tile_n):
    cols = slice(e * c.epi_tile_n, (e + 1) * c.epi_tile_n)
    slot = e % 2
    plgpu.wait_smem_to_gmem(1, wait_read_only=True)
    slots[slot] = out[:, cols].astype(out_dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(
      slots.at[slot], wg_out.at[:, pl.ds(e * c.epi_tile_n, c.epi_tile_n)]
    )


def requantize_tile(out, slots, q_out, s_g, seed, bi, origin, plan: BandPlan):
  """INT8-out epilogue of one warpgroup tile (see ``int8_matmul``).

  Block maxima without cross-warp reductions (Lane semantics forbids them
  with several Pallas threads): the max over each block's columns reduces
  in registers (a row lives in one quad of lanes) and goes to SMEM; after a
  warpgroup barrier every thread folds a block's row maxima with scalar
  SMEM loads. The scale and its exact reciprocal are scalars; the codes come
  from the fp32 tile staged in SMEM, read back block by block (RTN/SR at the
  output's global coordinates, as the Mosaic quantize kernel). Codes leave
  by TMA, one scale per block straight to GMEM.
  """
  f_slot, q_slot, m_slot = slots
  s = plan.block
  rows, cols = f_slot.shape
  plgpu.wait_smem_to_gmem(0, wait_read_only=True)
  f_slot[...] = out
  a = jnp.abs(out)
  a = jnp.where(a <= F32_MAX, a, jnp.inf)  # NaN/inf -> inf, kept by max
  for j in range(cols // s):
    m_slot[j, :] = jnp.max(a[:, j * s : (j + 1) * s], axis=1)
  plgpu.commit_smem()  # fence + warpgroup barrier: lanes read others' data
  layout = strided((s, s))
  for i in range(rows // s):
    for j in range(cols // s):
      m = m_slot[j, i * s]
      for r in range(1, s):
        m = jnp.maximum(m, m_slot[j, i * s + r])
      ok = m <= F32_MAX
      scale, inverse = tile_scale(
        jnp.where(ok, m, 0.0), ok, plan.grid.qmax, reciprocal=divided_reciprocal
      )
      row0, col0 = origin[0] + i * s, origin[1] + j * s
      s_g[bi, row0 // s, col0 // s] = scale
      block = (pl.ds(i * s, s), pl.ds(j * s, s))
      x = plgpu.load(f_slot.at[block], layout=layout)
      q_slot[block] = block_codes(
        plan, x, inverse, ok, seed, row0, col0, layout, False, batch=bi
      )
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(q_slot, q_out)
