"""Dequantize on Hopper (Mosaic GPU): ``q * scale`` per tile, cast.

One CTA per ``block x cols`` band of codes: TMA into SMEM, each
``block x block`` sub-block times its scale (a scalar read from the scale
array; per-tensor: the single scale) in f32, cast to ``out_dtype``, TMA out.
Ragged shapes are zero-padded to whole bands and the padding sliced off.
"""

import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.mosaic import _hw


def _kernel(q_g, s_g, o_g, q_s, o_s, bar, *, block, cols, per_tensor):
  bi, i, j = (lax.axis_index(n) for n in ("b", "i", "j"))
  rows_g, cols_g = pl.ds(i * block, block), pl.ds(j * cols, cols)
  plgpu.copy_gmem_to_smem(q_g.at[bi, rows_g, cols_g], q_s, bar)
  plgpu.barrier_wait(bar)
  layout = plgpu.Layout.WG_STRIDED(
    (block, block), vec_size=min(8, block * block // 128)
  )
  for t in range(cols // block):
    sub = pl.ds(t * block, block)
    q = plgpu.load(q_s.at[:, sub], layout=layout).astype(jnp.float32)
    if per_tensor:
      scale = s_g[0, 0, 0]
    else:
      scale = s_g[bi, i, j * (cols // block) + t]
    o_s[:, sub] = (q * scale).astype(o_s.dtype)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(o_s, o_g.at[bi, rows_g, cols_g])
  plgpu.wait_smem_to_gmem(0)


@functools.partial(
  jax.jit,
  static_argnames=("block", "cols", "per_tensor", "out_dtype", "interpret"),
)
def dequantize_blocks(
  q, s, *, block, cols, per_tensor, out_dtype, interpret
) -> jax.Array:
  """(B, M, K) ``out_dtype`` from codes and (S x S or one) scales."""
  b, m, k = q.shape
  pm, pk = -(-m // block) * block, -(-k // cols) * cols
  if (pm, pk) != (m, k):
    q = jnp.pad(q, ((0, 0), (0, pm - m), (0, pk - k)))
  if not per_tensor:  # scales of the padded blocks (never used: sliced off)
    s = jnp.pad(
      s, ((0, 0), (0, pm // block - s.shape[1]), (0, pk // block - s.shape[2]))
    )
  out = _hw.band_kernel(
    functools.partial(_kernel, block=block, cols=cols, per_tensor=per_tensor),
    out_type=jax.ShapeDtypeStruct((b, pm, pk), out_dtype),
    scratch_types=(
      plgpu.SMEM((block, cols), q.dtype),
      plgpu.SMEM((block, cols), out_dtype),
      plgpu.Barrier(num_arrivals=1),
    ),
    grid=(b, pm // block, pk // cols),
    interpret=interpret,
    name="lpj_mosaic_dequantize",
  )(q, s)
  return out[:, :m, :k]
