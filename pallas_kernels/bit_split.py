"""Bit splitting: a gradient as two INT4 tensors, ``g ~ (14 hi + lo) / sigma``.

"Training Transformers with 4-bit Integers" (§3.3 of the methods notes)
splits each gradient entry into a high and a low INT4 part. For a tensor
``g`` with ``a = max |g|`` (per tensor) and uniforms ``u`` in [0, 1):

=========  ======================  ====================  =====================
split      sigma                   hi                    lo
=========  ======================  ====================  =====================
faithful   196 / (2 a) = 98 / a    clip(rint(G/14),      clip(floor(G - 14 hi
                                   -6, 6)                + u), -6, 6)
full       105 / a                 clip(rint(G/14),      floor(G - 14 hi + u)
                                   -7, 7)                (in [-7, 7], no clip)
=========  ======================  ====================  =====================

with ``G = sigma * g`` (``rint``: nearest-even; ``G / 14`` is computed as
``G * RN(1/14)``). Both parts lie in [-8, 7].

The faithful split (the released CUDA and Python code) represents
``|G| <= 14*6 + 6 = 90`` of its range 98, so the largest ~8% of magnitudes are
clipped, and values whose residual ``G - 14 hi`` exceeds 6 in magnitude are
biased by the clamp of ``lo``. The full split scales the maximum to
``105 = 14*7 + 7``: ``|G - 14 hi| <= 7`` always (hi = 7 leaves a residual in
[0, 7] at the top), so ``lo`` never clips and the estimator is unbiased,
``E[(14 hi + lo) / sigma] = g`` exactly, on a grid 7% finer.

Note ``14 hi + lo = 14 hi + floor(G - 14 hi + u) = floor(G + u)`` for the
full split: without sampling, bit splitting is stochastic rounding of
``sigma * g`` to integers in [-105, 105], which fits int8. So the unsampled
backward is one INT8 GEMM on ``14 hi + lo`` (:func:`combined_codes`), not two
INT4 GEMMs; the two parts matter only when rows of hi and lo are sampled
separately (leverage-score sampling).

A tensor with NaN or inf gets ``sigma`` NaN and zero codes (the special-value
contract of every quantizer); an all-zero tensor gets ``sigma = 1``.
"""

import jax.numpy as jnp
import numpy as np
from jax import Array

from pallas_kernels import tiles
from pallas_kernels.numerics import (
  divided_reciprocal,
  finite_absmax,
  floor,
  rint,
)

SPLIT_BASE = 14  # G = 14 hi + lo
SPLITS = {
  # name: (sigma numerator, |hi| bound, |lo| bound or None for no clip)
  "faithful": (98.0, 6.0, 6.0),
  "full": (105.0, 7.0, None),
}


def check_split(split) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")


def sigma_from_absmax(
  absmax: Array, ok: Array, split: str, reciprocal=divided_reciprocal
) -> Array:
  """``top / absmax`` (1 where the maximum is 0, NaN where ``ok`` is False);
  ``reciprocal``: :func:`~pallas_kernels.numerics.divided_reciprocal` in XLA,
  :func:`~pallas_kernels.numerics.reciprocal_rn` inside portable kernels
  (the same bits)."""
  check_split(split)
  top = SPLITS[split][0]
  sigma = jnp.float32(top) * reciprocal(jnp.maximum(absmax, 2.0**-126))
  sigma = jnp.where(absmax == 0, 1.0, sigma)
  return jnp.where(ok, sigma, jnp.float32(jnp.nan))


def split_sigma(g: Array, split: str = "faithful", block=None) -> Array:
  """``sigma = top / max |g|``: an f32 scalar (per tensor), or with
  ``block`` one per ``block`` x ``block`` square of the last two axes
  (shaped like their scale grid); 1 for all zeros, NaN for NaN/inf."""
  g = g.astype(jnp.float32)
  if block is None:
    absmax, ok = finite_absmax(g)
  else:
    absmax, ok = tiles.tile_absmax(g, (block, block))
  return sigma_from_absmax(absmax, ok, split)


def bit_split(
  g: Array, u: Array, split: str = "faithful", sigma: Array | None = None
) -> tuple[Array, Array, Array]:
  """(hi, lo, sigma): int8 codes in [-8, 7] with ``g ~ (14 hi + lo) / sigma``.

  Args:
    g: float array.
    u: uniforms in [0, 1) of g's shape (e.g.
      ``numerics.uniform_from_bits(random_bits(seed, row, col))``).
    split: "faithful" or "full" (module docstring).
    sigma: the scale, broadcastable to g (default: :func:`split_sigma` of
      ``g``, per tensor).
  """
  check_split(split)
  top, hi_bound, lo_bound = SPLITS[split]
  if sigma is None:
    sigma = split_sigma(g, split)
  scaled = g.astype(jnp.float32) * sigma
  ok = jnp.abs(scaled) <= np.finfo(np.float32).max
  # The clip absorbs sigma * max|g| rounding above ``top``: the full split's
  # residual then never exceeds 7.
  scaled = jnp.clip(jnp.where(ok, scaled, 0.0), -top, top)
  hi = jnp.clip(
    rint(scaled * np.float32(1.0 / SPLIT_BASE)), -hi_bound, hi_bound
  )
  lo = floor(scaled - SPLIT_BASE * hi + u)
  if lo_bound is not None:
    lo = jnp.clip(lo, -lo_bound, lo_bound)
  return hi.astype(jnp.int8), lo.astype(jnp.int8), sigma


def combined_codes(hi: Array, lo: Array) -> Array:
  """``14 hi + lo`` as int8 (|value| <= 105): the one INT8 GEMM operand of an
  unsampled bit split."""
  wide = hi.astype(jnp.int32) * SPLIT_BASE + lo.astype(jnp.int32)
  return wide.astype(jnp.int8)
