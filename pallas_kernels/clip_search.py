"""Per-block clip search for INT4 absmax blocks: the scale that minimises
each block's squared error among a few clipped maxima.

Absmax scaling spends the 15 INT4 levels on the block's largest value; for
bell-shaped data (a Hadamard-rotated block is close to Gaussian) a scale
that clips the extreme values rounds the bulk more finely and loses less in
total. For each S x S block with finite maximum ``a`` and each candidate
``c`` (1 first):

    s_c = tile_scale(a, 7 / c)      (a * RN(c / 7): one rounding, the
                                     contract of every quantizer)
    q_c = clip(rint(v / s_c), -7, 7)
    E_c = sum over the block of rint(((q_c s_c - v) / s_1)^2 * 2^12)   (int32)

and the block keeps the first ``c`` with the smallest ``E_c``. The error is
counted in integer units of ``s_1^2 / 2^12`` (each element's term is computed
elementwise, the sum is exact in int32), so the choice does not depend on a
summation order: the kernel and the jnp reference pick the same ``c``, bit for
bit. The codes stay INT4 absmax-block codes (``v ~ q s``): the format does not
change, only how its scale is chosen. Blocks holding NaN or inf keep scale
NaN and codes 0; zero blocks scale 1.

>>> import jax.numpy as jnp
>>> v = jnp.full((4, 4), 0.66).at[0, 0].set(1.0)  # one outlier in 16
>>> codes, scale = searched_block_quantize(v, 4, (1.0, 0.9), 7.0)
>>> round(float(scale[0, 0]) * 7, 6)  # c = 0.9: the outlier clips to 0.9
0.9
>>> codes[0].tolist()  # 0.66 / (0.9 / 7) = 5.13 -> 5 (with c = 1: 4.62 -> 5)
[7, 5, 5, 5]
"""

import jax.numpy as jnp
import numpy as np
from jax import Array

from pallas_kernels._layout import expand_cols, expand_rows
from pallas_kernels.numerics import finite_absmax, rint, round_int, tile_scale

# The candidates the INT4 recipes search (fractions of the block maximum).
CLIP_CANDIDATES = (1.0, 0.9, 0.8, 0.7)
ERROR_UNITS = np.float32(2.0**12)  # per s_1^2; a 128 x 128 block fits int32


def check_clip_candidates(candidates, name: str = "clip_candidates") -> None:
  """ValueError unless a tuple starting at 1.0 of floats in (0, 1]."""
  ok = (
    isinstance(candidates, tuple)
    and candidates
    and candidates[0] == 1.0
    and all(isinstance(c, float) and 0.0 < c <= 1.0 for c in candidates)
  )
  if not ok:
    raise ValueError(
      f"{name} must be a tuple of floats in (0, 1] starting with 1.0 (plain "
      f"absmax), got {candidates!r}"
    )


def _block_sums(x: Array, block: int) -> Array:
  r, c = x.shape
  blocks = x.reshape(r // block, block, c // block, block)
  return jnp.sum(jnp.sum(blocks, axis=3), axis=1)  # one axis at a time


def searched_block_quantize(
  v: Array, block: int, candidates: tuple[float, ...], qmax: float
) -> tuple[Array, Array]:
  """(int8 codes (R, C), f32 scales (R/S, C/S)) of f32 ``v`` (R, C), R and
  C multiples of ``block`` (module docstring). Pure jnp: runs in XLA and
  inside kernels on their tiles."""

  def expand(s):
    return expand_cols(expand_rows(s, block), block)

  nr, nc = v.shape[0] // block, v.shape[1] // block
  absmax, ok = finite_absmax(v.reshape(nr, block, nc, block), axis=(1, 3))
  ok_full = expand(ok)
  best = None
  for c in candidates:
    # One multiply by RN(c / qmax): a product of two constants could be
    # reassociated by one compiler and not the other.
    scale, inverse = tile_scale(absmax, ok, qmax / c)
    q = round_int(v * expand(inverse), qmax, None)
    if best is None:
      unit = expand(inverse)  # 1 / s_1
    e = (q * expand(scale) - v) * unit
    term = jnp.where(ok_full, rint(e * e * ERROR_UNITS), 0.0)
    error = _block_sums(term.astype(jnp.int32), block)
    if best is None:
      best = (error, q, scale)
      continue
    better = error < best[0]
    best = (
      jnp.where(better, error, best[0]),
      jnp.where(expand(better), q, best[1]),
      jnp.where(better, scale, best[2]),
    )
  _, q, scale = best
  return jnp.where(ok_full, q, 0.0).astype(jnp.int8), scale
