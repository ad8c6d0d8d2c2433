"""Rounding of scaled values onto a format's grid.

``y = x / scale`` already lies in ``[-qmax, qmax]`` (up to one fp32 rounding);
these functions map it to a representable code:

* ``nearest``: round to nearest, ties to even (INT8: ``rint``; FP8: the
  hardware cast, after saturating to ``[-fmax, fmax]``).
* ``stochastic``: round down or up with probabilities that make the result
  unbiased, ``E[q] = y``, using ``u ~ U[0, 1)`` from the counter hash:

    INT8:  q = floor(y + u)
    FP8:   q = sign(y) * floor(|y| / ulp(|y|) + u) * ulp(|y|)

  where ``ulp(a) = 2^(max(e(a), emin) - mantissa_bits)`` is the FP8 spacing
  at ``a`` (``e`` the binary exponent). Below the smallest normal the spacing
  is constant (subnormals); at a binade edge a round-up lands exactly on the
  next power of two, which FP8 represents. Both results are clipped to the
  grid, so a round-up never overflows (Jetfire's 127 + noise -> -128 wrap).

Only elementwise arithmetic, ``floor``, comparisons and bitcasts are used.
"""

import jax.numpy as jnp
import numpy as np
from jax import Array, lax


def round_int(y: Array, qmax: float, u: Array | None) -> Array:
  """Rounds scaled values to integers in [-qmax, qmax] (float32 result)."""
  if u is None:
    r = lax.round(y, lax.RoundingMethod.TO_NEAREST_EVEN)
  else:
    r = jnp.floor(y + u)
  return jnp.clip(r, -qmax, qmax)


def _fp8_ulp(a: Array, dtype: np.dtype) -> Array:
  """Spacing of the FP8 grid at magnitude ``a`` >= 0 (a power of two)."""
  info = jnp.finfo(dtype)
  exponent = (lax.bitcast_convert_type(a, jnp.uint32) >> 23).astype(jnp.int32)
  exponent = jnp.maximum(exponent - 127, info.minexp)
  biased = (exponent - info.nmant + 127).astype(jnp.uint32) << 23
  return lax.bitcast_convert_type(biased, jnp.float32)


def round_fp8(y: Array, dtype: np.dtype, u: Array | None) -> Array:
  """Rounds scaled values onto the FP8 grid; returns codes of ``dtype``."""
  fmax = float(jnp.finfo(dtype).max)
  y = jnp.clip(y, -fmax, fmax)
  if u is None:
    return y.astype(dtype)
  a = jnp.abs(y)
  ulp = _fp8_ulp(a, dtype)
  r = jnp.minimum(jnp.floor(a / ulp + u) * ulp, fmax)
  return jnp.where(y < 0, -r, r).astype(dtype)
