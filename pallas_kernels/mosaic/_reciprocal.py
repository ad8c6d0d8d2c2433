"""Correctly rounded reciprocals and tile scales for Mosaic GPU kernels.

Mosaic GPU compiles f32 ``/`` to PTX ``div.full.f32`` (jaxlib passes
``-nvptx-prec-divf32=1``; ``div.full`` is within 2 ulp, not correctly
rounded), and the exact integer long division of
:func:`pallas_kernels._rounding.reciprocal_rn` (a 25-step loop) makes Mosaic
lowering slow. So a kernel takes ``r = 1 / d`` from the hardware and then
corrects it exactly:

    P = m_d * m_r                (48-bit product of the 24-bit significands,
                                  in 12-bit limbs: exact in int32)
    D = 2^(46 - e_d - e_r) - P   (signed; D / m_d is 1/d - r in ulps of r)
    r <- next float up    if 2 D >  m_d
    r <- next float down  if 2 D < -m_d / (2 if r is a power of two else 1)

Two such steps turn any ``r`` within 2 ulp into ``RN(1 / d)`` (ties cannot
occur: a 25-bit odd midpoint times a 24-bit significand is never a power of
two). Everything is integer add/multiply/shift/compare on values of any
shape, scalars included, so the same function runs in jnp (where the tests
perturb ``r`` by up to 2 ulp) and in a kernel (in the GPU interpreter ``/`` is
already exact and the correction keeps it). Valid for normal ``d`` whose
reciprocal is normal, which every clipped tile scale is.
"""

import jax.numpy as jnp
from jax import Array, lax

from pallas_kernels._rounding import SCALE_FLOOR, max_scale

_MANTISSA = 0x7FFFFF
_HIDDEN = 0x800000
_LIMB = 0xFFF


def _parts(x: Array) -> tuple[Array, Array]:
  """(24-bit significand, biased exponent) of positive normal f32, int32."""
  bits = lax.bitcast_convert_type(x, jnp.int32)
  return (bits & _MANTISSA) | _HIDDEN, bits >> 23


def _residual(d: Array, r: Array) -> tuple[Array, Array, Array]:
  """(D, m_d, m_r): D = 2^(46 - e_d - e_r) - m_d * m_r, exactly (int32)."""
  md, ed = _parts(d)
  mr, er = _parts(r)
  a1, a0 = md >> 12, md & _LIMB
  b1, b0 = mr >> 12, mr & _LIMB
  mid = a1 * b0 + a0 * b1  # < 2^25
  low = a0 * b0 + ((mid & _LIMB) << 12)  # < 2^25
  high = a1 * b1 + (mid >> 12) + (low >> 24)  # P = high * 2^24 + low24
  # s * r is within a few ulp of 1, so e_d + e_r - 254 is 0 or -1 and the
  # target 2^46 or 2^47 is (2^22 or 2^23) * 2^24.
  target_high = jnp.where(ed + er >= 254, 1 << 22, 1 << 23)
  return (target_high - high) * (1 << 24) - (low & 0xFFFFFF), md, mr


def _correct_once(d: Array, r: Array) -> Array:
  residual, md, mr = _residual(d, r)
  down_limit = jnp.where(mr == _HIDDEN, md >> 1, md)
  step = jnp.where(2 * residual > md, 1, 0) - jnp.where(
    -2 * residual > down_limit, 1, 0
  )
  bits = lax.bitcast_convert_type(r, jnp.int32) + step
  return lax.bitcast_convert_type(bits, jnp.float32)


def corrected_reciprocal(d: Array, r: Array) -> Array:
  """``RN(1 / d)`` from any ``r`` within 2 ulp of ``1 / d`` (see above)."""
  return _correct_once(d, _correct_once(d, r))


def tile_scale(absmax: Array, ok: Array, qmax: float) -> tuple[Array, Array]:
  """(scale, 1 / scale) as :func:`pallas_kernels._rounding.tile_scale`.

  The same clipped scale, and its reciprocal as ``1 / scale`` (``div.full``
  on a GPU) corrected to the nearest by :func:`corrected_reciprocal`.
  """
  scale = jnp.maximum(absmax * jnp.float32(1.0 / qmax), SCALE_FLOOR)
  scale = jnp.minimum(scale, max_scale(qmax))
  scale = jnp.where(absmax == 0, 1.0, scale).astype(jnp.float32)
  inverse = corrected_reciprocal(scale, 1.0 / scale)
  nan = jnp.float32(jnp.nan)
  return jnp.where(ok, scale, nan), jnp.where(ok, inverse, nan)
