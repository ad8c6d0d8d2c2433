"""Kernel-safe rounding: the same bits as ``lowprec_jax.formats`` everywhere.

The jnp quantizers use ``lax.round``, ``jnp.floor``, f32 division and the
hardware FP8 cast. None of these is portable into a kernel: Triton has no
``round``, Mosaic GPU has no ``floor``, Triton's f32 ``/`` is the approximate
``div.full.f32`` (up to 2 ulp off), and FP8 casts differ between backends.
This module rebuilds each from operations every backend lowers exactly (f32
add/multiply/compare, uint32 integer arithmetic, bitcasts), so a kernel gets
bit-for-bit the results of the reference on any backend:

* ``rint(y)``: round half to even from the truncation ``t = int(|y|)`` and
  the exact fraction ``|y| - t`` (up if above 1/2, or at 1/2 when t is odd),
  sign restored bitwise. The magic-number form ``(|y| + 2^23) - 2^23`` is
  not safe: XLA simplifies it to ``|y|``.
* ``floor(y) = r - (r > y)`` with ``r = rint(y)``.
* ``round_int`` and ``round_fp8``: INT8 and FP8 round-to-nearest-even and
  stochastic rounding exactly as ``lowprec_jax/formats/_rounding.py``; FP8
  values are rounded on the FP8 grid in f32 (scaling by exact powers of two),
  so the final cast only converts representable values.
* ``reciprocal_rn(d)``: the correctly rounded ``1 / d``, by restoring long
  division of the 24-bit significands in uint32.
* ``tile_scale(absmax, ok, qmax)``: a tile's scale and its reciprocal, the
  formula of ``lowprec_jax/formats/_quantize.py`` (as XLA compiles it).

Everything is elementwise on arrays of any shape (scalars included), so the
same helpers serve jnp code and kernel bodies.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import Array, lax

_TWO_23 = 2.0**23  # from here on every f32 is an integer
_SIGN = 0x80000000
_MANTISSA = 0x7FFFFF
_HIDDEN = 0x800000
F32_MAX = float(np.finfo(np.float32).max)
SCALE_FLOOR = 2.0**-126
INT8_QMAX = 127.0


def _bits(x: Array) -> Array:
  return lax.bitcast_convert_type(x, jnp.uint32)


def _float(bits: Array) -> Array:
  return lax.bitcast_convert_type(bits, jnp.float32)


def _with_sign_of(magnitude: Array, y: Array) -> Array:
  """``copysign(magnitude, y)`` for magnitude >= 0, -0.0 included."""
  return _float(_bits(magnitude) | (_bits(y) & jnp.uint32(_SIGN)))


def rint(y: Array) -> Array:
  """Rounds f32 to the nearest integer, ties to even (``lax.round`` RNE)."""
  a = jnp.abs(y)
  small = a < _TWO_23  # False for NaN; |y| >= 2^23 is already an integer
  t = jnp.where(small, a, 0.0).astype(jnp.int32)  # truncation
  whole = t.astype(jnp.float32)
  frac = a - whole  # exact: whole <= a < whole + 1 < 2^23
  odd = (t & 1) == 1
  up = (frac > 0.5) | ((frac == 0.5) & odd)
  r = whole + up.astype(jnp.float32)
  return _with_sign_of(jnp.where(small, r, a), y)


def floor(y: Array) -> Array:
  """``jnp.floor`` for f32 without the floor primitive."""
  r = rint(y)
  return r - jnp.where(r > y, 1.0, 0.0).astype(jnp.float32)


def round_int(y: Array, qmax: float, u: Array | None) -> Array:
  """Scaled values to integers in [-qmax, qmax]: rint(y), or floor(y + u)."""
  r = rint(y) if u is None else floor(y + u)
  return jnp.clip(r, -qmax, qmax)


def _fp8_spacing(a: Array, dtype) -> tuple[Array, Array]:
  """FP8 grid spacing at magnitudes ``a`` >= 0 and its reciprocal (powers of 2)."""
  info = jnp.finfo(dtype)
  exponent = (_bits(a) >> 23).astype(jnp.int32) - 127
  exponent = jnp.maximum(exponent, info.minexp) - info.nmant
  ulp = _float(((exponent + 127) << 23).astype(jnp.uint32))
  inverse = _float(((127 - exponent) << 23).astype(jnp.uint32))
  return ulp, inverse


def round_fp8(y: Array, dtype, u: Array | None) -> Array:
  """Scaled values onto the FP8 grid of ``dtype``; returns ``dtype`` codes.

  Nearest: RNE on the grid after saturating to [-fmax, fmax] (the reference
  casts; the cast keeps the sign of zero, so does this). Stochastic:
  ``sign(y) floor(|y| / ulp + u) ulp`` capped at fmax (the reference writes
  ``where(y < 0, -r, r)``, so -0.0 becomes +0.0 there, and here).
  """
  fmax = float(jnp.finfo(dtype).max)
  y = jnp.clip(y, -fmax, fmax)
  a = jnp.abs(y)
  ulp, inverse = _fp8_spacing(a, dtype)
  # a * inverse is exact (a power-of-two scaling), like the reference's a / ulp.
  if u is None:
    return _with_sign_of(rint(a * inverse) * ulp, y).astype(dtype)
  r = jnp.minimum(floor(a * inverse + u) * ulp, fmax)
  return jnp.where(y < 0, -r, r).astype(dtype)


def reciprocal_rn(d: Array) -> Array:
  """``1 / d`` rounded to nearest even, using integer arithmetic only.

  Valid for normal ``d > 0``. Results below the smallest normal f32
  (``d > 2^126``) flush to zero, as XLA does; scales never get there.
  """
  d_bits = _bits(d)
  d_exp = (d_bits >> 23).astype(jnp.int32)
  d_man = (d_bits & jnp.uint32(_MANTISSA)) | jnp.uint32(_HIDDEN)
  # Normalise so that the significand quotient rem / d_man lies in [1, 2).
  # (The numerator 1.0 is a constant: Triton cannot bitcast a constant.)
  below = d_man > _HIDDEN
  rem = jnp.where(below, jnp.uint32(_HIDDEN << 1), jnp.uint32(_HIDDEN))
  exponent = 254 - d_exp - below.astype(jnp.int32)

  # 24 quotient bits plus a guard bit; rem < 2^25 throughout. A loop, not
  # an unrolled chain: XLA:CPU takes ~40 s to compile 25 unrolled steps
  # feeding a clip inside an interpreted kernel.
  def step(_, carry):
    quotient, rem = carry
    bit = rem >= d_man
    quotient = (quotient << 1) | bit.astype(jnp.uint32)
    return quotient, (rem - jnp.where(bit, d_man, jnp.uint32(0))) << 1

  quotient, rem = lax.fori_loop(0, 25, step, (jnp.zeros_like(d_man), rem))
  man = quotient >> 1
  guard = (quotient & 1) == 1
  round_up = guard & ((rem != 0) | ((man & 1) == 1))
  man = man + round_up.astype(jnp.uint32)
  carry = man >> 24  # the rounding carried into a new binade
  man = man >> carry
  exponent = exponent + carry.astype(jnp.int32)
  clamped = jnp.clip(exponent, 1, 254).astype(jnp.uint32)
  q = _float((clamped << 23) | (man & jnp.uint32(_MANTISSA)))
  q = jnp.where(exponent >= 255, jnp.inf, q)
  return jnp.where(exponent <= 0, 0.0, q).astype(jnp.float32)


def max_scale(qmax: float) -> float:
  """The largest f32 scale with ``qmax * scale <= f32 max`` (as the reference)."""
  cap = np.float32(F32_MAX / qmax)
  while float(cap) * qmax > F32_MAX:
    cap = np.nextafter(cap, np.float32(0))
  return float(cap)


def tile_scale(absmax: Array, ok: Array, qmax: float) -> tuple[Array, Array]:
  """(scale, 1 / scale) of tiles from their finite absmax and finiteness.

  ``scale = clip(absmax * RN(1 / qmax), 2^-126, max_scale)``, 1 for an
  all-zero tile, NaN (and a NaN reciprocal) where ``ok`` is False (NaN or
  inf seen). The reference writes ``absmax / qmax``, but XLA rewrites a
  division by a constant as a multiplication by its rounded reciprocal, so
  that product is what it computes (under ``jit``, where the library runs);
  the kernels compute the same product explicitly.
  """
  scale = jnp.maximum(absmax * np.float32(1.0 / qmax), SCALE_FLOOR)
  scale = jnp.minimum(scale, max_scale(qmax))
  scale = jnp.where(absmax == 0, 1.0, scale).astype(jnp.float32)
  inverse = reciprocal_rn(scale)
  nan = jnp.float32(jnp.nan)
  return jnp.where(ok, scale, nan), jnp.where(ok, inverse, nan)


def finite_absmax(x: Array, axis=None, keepdims: bool = False):
  """(max |x| over the finite entries, True where no entry is NaN or inf).

  ``axis``: an int, a tuple of ints or None (all). NaN is detected
  explicitly: XLA's max reduction may drop it on CPU. Axes are reduced one
  at a time, last first: Triton's multi-axis reduction fails on values that
  carry a sharding (as under an abstract mesh).
  """
  a = jnp.abs(x)
  finite = a <= F32_MAX  # False for NaN and inf
  absmax = jnp.where(finite, a, 0.0)
  bad = jnp.where(finite, 0.0, 1.0)
  if axis is None:
    axis = tuple(range(x.ndim))
  elif isinstance(axis, int):
    axis = (axis,)
  for one in sorted(axis, reverse=True):
    absmax = jnp.max(absmax, axis=one, keepdims=keepdims)
    bad = jnp.max(bad, axis=one, keepdims=keepdims)
  return absmax, bad == 0


@dataclasses.dataclass(frozen=True)
class NumberGrid:
  """The codes' number grid: INT8 ([-127, 127]) or one FP8 dtype."""

  dtype: np.dtype

  @property
  def is_int8(self) -> bool:
    return self.dtype == np.dtype(np.int8)

  @property
  def qmax(self) -> float:
    return INT8_QMAX if self.is_int8 else float(jnp.finfo(self.dtype).max)

  @classmethod
  def int8(cls) -> "NumberGrid":
    return cls(np.dtype(np.int8))

  def round(self, y: Array, u: Array | None) -> Array:
    """Codes of scaled values ``y`` (RNE, or SR with uniforms ``u``)."""
    if self.is_int8:
      return round_int(y, INT8_QMAX, u).astype(jnp.int8)
    return round_fp8(y, self.dtype, u)
