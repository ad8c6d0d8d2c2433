"""Numerics of every quantizer: rounding, the scale rule, reciprocals, SR hash.

This module is the one definition of how a tile of values becomes codes; the
jnp quantizers of ``lowprec_jax.formats``, the portable Pallas kernels and the
Mosaic GPU kernels all call it, so every implementation produces the same
bits. For a tile with finite absmax ``a`` and a grid maximum ``qmax`` (127
for INT8, 448 for E4M3, 57344 for E5M2):

    scale   = 1                                        if a == 0
            = NaN (codes 0)                            if the tile holds NaN/inf
            = min(max(a * RN(1/qmax), 2^-126), S_max)  otherwise
    inverse = RN(1 / scale)                   (correctly rounded, never ``/``)
    q       = rint(x * inverse)  or  floor(x * inverse + u)   (INT8, clipped)
            = RNE or SR onto the FP8 grid, saturated to [-fmax, fmax]

with ``S_max = RD(f32max / qmax)`` (so ``qmax * scale`` stays finite) and,
for stochastic rounding, ``u = uniform(random_bits(seed, row, col))`` at the
element's global coordinates. ``a * RN(1/qmax)`` is written out: XLA
rewrites ``a / qmax`` into that product under jit but not eagerly. Scales
stored in bf16 are rounded *up* to bf16 before the codes are computed.

Everything is built from operations all backends lower exactly (f32
add/multiply/compare, uint32/int32 integer arithmetic, bitcasts, Python
constants; no ``round``, ``floor``, f32 division, ``jax.random`` or captured
arrays), elementwise on arrays of any shape, scalars included:

* ``rint(y)``: round half to even from the truncation ``t = int(|y|)`` and
  the exact fraction ``|y| - t``, sign restored bitwise (the magic-number
  form ``(|y| + 2^23) - 2^23`` is not safe: XLA simplifies it to ``|y|``);
  ``floor(y) = r - (r > y)`` with ``r = rint(y)``;
* FP8 values are rounded on the FP8 grid in f32 (scaling by exact powers of
  two), so the final cast only converts representable values;
* ``reciprocal_rn(d)``: ``1 / d`` by restoring long division of the 24-bit
  significands; ``corrected_reciprocal(d, r)``: the same from any ``r``
  within 2 ulp (a GPU's ``div.full.f32``), by two exact integer corrections;
* the hash: ``lowbias32`` (C. Wellons, "Prospecting for hash functions",
  2018), a uint32 bijection; four keyed rounds decorrelate rows, columns and
  seeds. The noise of an element depends only on ``(seed, row, col)``, never
  on how a kernel tiles the tensor, so a rematerialised pass draws the same.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import Array, lax

F32_MAX = float(np.finfo(np.float32).max)
BF16_MAX = float(jnp.finfo(jnp.bfloat16).max)
SCALE_FLOOR = 2.0**-126  # the smallest normal f32: 1 / scale never overflows
INT8_QMAX = 127.0
INT4_QMAX = 7.0  # absmax-scaled INT4 codes are symmetric: [-7, 7]
INT4_MIN, INT4_MAX = -8, 7  # the 4-bit two's-complement range (LSQ, bit split)
_TWO_23 = 2.0**23  # from here on every f32 is an integer
_SIGN = 0x80000000
_MANTISSA = 0x7FFFFF
_HIDDEN = 0x800000
_LIMB = 0xFFF
_BF16_LOW = 0xFFFF
# Odd hash constants: the 32-bit golden ratio and the fractional digits of pi.
_GOLDEN = 0x9E3779B9
_PI_FRAC = 0x243F6A88


def _bits(x: Array) -> Array:
  return lax.bitcast_convert_type(x, jnp.uint32)


def _float(bits: Array) -> Array:
  return lax.bitcast_convert_type(bits, jnp.float32)


# ------------------------------------------------------------------- hash


def mix32(x: Array) -> Array:
  """The ``lowbias32`` finalizer: a bijective avalanche mix of uint32 values."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x21F0AAAD)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0xD35A2D97)
  return x ^ (x >> 15)


def random_bits(seed: Array, row: Array, col: Array) -> Array:
  """32 random bits for the element at ``(row, col)`` under ``seed``.

  Args:
    seed: uint32 scalar (or array broadcastable to ``row``).
    row: uint32 global row index (all axes but the last, flattened).
    col: uint32 global column index (the last axis).

  Returns:
    uint32 array of the broadcast shape of the inputs.
  """
  seed = jnp.asarray(seed, jnp.uint32)
  key = mix32(seed ^ jnp.uint32(_PI_FRAC))
  h = mix32(key ^ (jnp.asarray(row, jnp.uint32) * jnp.uint32(_GOLDEN)))
  h = mix32(h + jnp.asarray(col, jnp.uint32))
  return mix32(h ^ key)


def uniform_from_bits(bits: Array) -> Array:
  """uint32 bits -> float32 in [0, 1) on a grid of 2^-24 (exact in f32).

  The top 24 bits are used, so the largest value is 1 - 2^-24 and the
  stochastic-rounding bias from the finite grid is at most 2^-25 of a step.
  """
  return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def derive_seed(seed: Array, salt: int) -> Array:
  """An independent uint32 seed for one use (``salt``) of ``seed``."""
  salted = jnp.asarray(seed, jnp.uint32) + jnp.uint32(
    salt * _GOLDEN & 0xFFFFFFFF
  )
  return mix32(mix32(salted) ^ jnp.uint32(_PI_FRAC))


# --------------------------------------------------------------- rounding


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
  """Scaled values to integers in [-qmax, qmax] (f32): rint(y) or floor(y + u).

  Clipping after the round-up means SR never wraps (Jetfire's 127 + noise
  -> -128 overflow).
  """
  r = rint(y) if u is None else floor(y + u)
  return jnp.clip(r, -qmax, qmax)


def _fp8_spacing(a: Array, dtype) -> tuple[Array, Array]:
  """FP8 grid spacing at magnitudes ``a`` >= 0 and its reciprocal (powers of 2).

  ``ulp(a) = 2^(max(e(a), emin) - mantissa_bits)``: constant below the
  smallest normal (subnormals).
  """
  info = jnp.finfo(dtype)
  exponent = (_bits(a) >> 23).astype(jnp.int32) - 127
  exponent = jnp.maximum(exponent, info.minexp) - info.nmant
  ulp = _float(((exponent + 127) << 23).astype(jnp.uint32))
  inverse = _float(((127 - exponent) << 23).astype(jnp.uint32))
  return ulp, inverse


def round_fp8(y: Array, dtype, u: Array | None) -> Array:
  """Scaled values onto the FP8 grid of ``dtype``; returns ``dtype`` codes.

  Nearest: RNE on the grid after saturating to [-fmax, fmax], keeping the
  sign of zero (as the hardware cast does). Stochastic (unbiased,
  ``E[q] = y``): ``sign(y) floor(|y| / ulp + u) ulp`` capped at fmax; a
  round-up at a binade edge lands exactly on the next power of two, and
  -0.0 becomes +0.0.
  """
  fmax = float(jnp.finfo(dtype).max)
  y = jnp.clip(y, -fmax, fmax)
  a = jnp.abs(y)
  ulp, inverse = _fp8_spacing(a, dtype)
  if u is None:
    return _with_sign_of(rint(a * inverse) * ulp, y).astype(dtype)
  r = jnp.minimum(floor(a * inverse + u) * ulp, fmax)
  return jnp.where(y < 0, -r, r).astype(dtype)


@dataclasses.dataclass(frozen=True)
class NumberGrid:
  """The codes' number grid: INT8 ([-127, 127]; -128 is never produced),
  INT4 (``jnp.int4``: [-7, 7] under an absmax scale, returned unpacked in
  int8 containers) or one FP8 dtype."""

  dtype: np.dtype

  @property
  def is_int8(self) -> bool:
    return self.dtype == np.dtype(np.int8)

  @property
  def is_int4(self) -> bool:
    return self.dtype == np.dtype(jnp.int4)

  @property
  def qmax(self) -> float:
    if self.is_int8:
      return INT8_QMAX
    if self.is_int4:
      return INT4_QMAX
    return float(jnp.finfo(self.dtype).max)

  @classmethod
  def int8(cls) -> "NumberGrid":
    return cls(np.dtype(np.int8))

  @classmethod
  def int4(cls) -> "NumberGrid":
    return cls(np.dtype(jnp.int4))

  def round(self, y: Array, u: Array | None) -> Array:
    """Codes of scaled values ``y`` (RNE, or SR with uniforms ``u``); INT4
    codes come back as int8 (pack them with :mod:`pallas_kernels.int4`)."""
    if self.is_int8 or self.is_int4:
      return round_int(y, self.qmax, u).astype(jnp.int8)
    return round_fp8(y, self.dtype, u)


# ------------------------------------------------------------ reciprocals


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


def _parts(x: Array) -> tuple[Array, Array]:
  """(24-bit significand, biased exponent) of positive normal f32, int32."""
  bits = lax.bitcast_convert_type(x, jnp.int32)
  return (bits & _MANTISSA) | _HIDDEN, bits >> 23


def _correct_once(d: Array, r: Array) -> Array:
  """One exact step of ``r`` towards ``RN(1 / d)``.

  With ``P = m_d * m_r`` (the 48-bit significand product, in 12-bit limbs:
  exact in int32) and ``D = 2^(46 - e_d - e_r) - P`` (so ``D / m_d`` is
  ``1/d - r`` in ulps of r): step up if ``2 D > m_d``, down if
  ``2 D < -m_d / (2 if r is a power of two else 1)``.
  """
  md, ed = _parts(d)
  mr, er = _parts(r)
  a1, a0 = md >> 12, md & _LIMB
  b1, b0 = mr >> 12, mr & _LIMB
  mid = a1 * b0 + a0 * b1  # < 2^25
  low = a0 * b0 + ((mid & _LIMB) << 12)  # < 2^25
  high = a1 * b1 + (mid >> 12) + (low >> 24)  # P = high * 2^24 + low24
  # d * r is within a few ulp of 1, so e_d + e_r - 254 is 0 or -1 and the
  # target 2^46 or 2^47 is (2^22 or 2^23) * 2^24.
  target_high = jnp.where(ed + er >= 254, 1 << 22, 1 << 23)
  residual = (target_high - high) * (1 << 24) - (low & 0xFFFFFF)
  down_limit = jnp.where(mr == _HIDDEN, md >> 1, md)
  step = jnp.where(2 * residual > md, 1, 0) - jnp.where(
    -2 * residual > down_limit, 1, 0
  )
  bits = lax.bitcast_convert_type(r, jnp.int32) + step
  return lax.bitcast_convert_type(bits, jnp.float32)


def corrected_reciprocal(d: Array, r: Array) -> Array:
  """``RN(1 / d)`` from any ``r`` within 2 ulp of ``1 / d``.

  Two exact corrections suffice (ties cannot occur: a 25-bit odd midpoint
  times a 24-bit significand is never a power of two). Valid for normal
  ``d`` whose reciprocal is normal, which every clipped scale is.
  """
  return _correct_once(d, _correct_once(d, r))


def divided_reciprocal(d: Array) -> Array:
  """``RN(1 / d)`` as ``1 / d`` corrected exactly: for Mosaic GPU kernels,
  whose ``/`` is ``div.full.f32`` (within 2 ulp) and where the 25-step loop
  of :func:`reciprocal_rn` makes lowering slow."""
  return corrected_reciprocal(d, 1.0 / d)


# ------------------------------------------------------------ scale rule


def round_to_bf16(x: Array, *, up: bool) -> Array:
  """Non-negative f32 ``x`` rounded to a bf16 value, up or down (exact, f32).

  Rounding up never passes the largest finite bf16.
  """
  bits = _bits(x)
  down = bits & jnp.uint32(~_BF16_LOW & 0xFFFFFFFF)
  if not up:
    return _float(down)
  inexact = (bits & jnp.uint32(_BF16_LOW)) != 0
  rounded = _float(jnp.where(inexact, down + jnp.uint32(_BF16_LOW + 1), down))
  return jnp.minimum(rounded, BF16_MAX)


def max_scale(qmax: float, scale_dtype=np.float32) -> float:
  """The largest scale (of ``scale_dtype``) with ``qmax * scale <= f32 max``.

  ``RN(f32max / qmax)`` can round up, and then the top code dequantizes to
  inf; the rounded-down quotient keeps every finite value finite.
  """
  cap = np.float32(F32_MAX / qmax)
  while float(cap) * qmax > F32_MAX:
    cap = np.nextafter(cap, np.float32(0))
  if np.dtype(scale_dtype) == np.dtype(jnp.bfloat16):
    cap = (np.asarray(cap).view(np.uint32) & np.uint32(0xFFFF0000)).view(
      np.float32
    )
  return float(cap)


def tile_scale(
  absmax: Array,
  ok: Array,
  qmax: float,
  *,
  scale_dtype=np.float32,
  reciprocal=reciprocal_rn,
) -> tuple[Array, Array]:
  """(scale, RN(1 / scale)) of tiles from their finite absmax (module doc).

  Args:
    absmax: max |x| over each tile's finite entries (f32).
    ok: False where the tile holds NaN or inf: scale and inverse are NaN.
    qmax: the grid maximum.
    scale_dtype: float32, or bfloat16 to round the scale up to a bf16 value
      (and the cap down to one), so it is stored exactly; returned as f32.
    reciprocal: :func:`reciprocal_rn` (integer arithmetic only: inside
      portable kernels), or :func:`divided_reciprocal` (the same bits) in
      XLA, where the 25-step loop would run as 25 kernel launches on a GPU,
      and inside Mosaic GPU kernels.
  """
  scale = jnp.maximum(absmax * np.float32(1.0 / qmax), SCALE_FLOOR)
  if np.dtype(scale_dtype) == np.dtype(jnp.bfloat16):
    scale = round_to_bf16(scale, up=True)
  scale = jnp.minimum(scale, max_scale(qmax, scale_dtype))
  scale = jnp.where(absmax == 0, 1.0, scale).astype(jnp.float32)
  inverse = reciprocal(scale)
  nan = jnp.float32(jnp.nan)
  return jnp.where(ok, scale, nan), jnp.where(ok, inverse, nan)


def reduced_tile_scale(absmax: Array, qmax: float) -> tuple[Array, Array]:
  """:func:`tile_scale` of maxima reduced in XLA between two kernels, where
  an inf (or NaN) maximum marks a tile holding NaN or inf; the reciprocal is
  :func:`divided_reciprocal` (no 25-step loop, which a GPU would run as 25
  kernel launches)."""
  ok = absmax <= F32_MAX
  return tile_scale(
    jnp.where(ok, absmax, 0.0), ok, qmax, reciprocal=divided_reciprocal
  )


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
  for one in sorted((a % x.ndim for a in axis), reverse=True):
    # initial=0 (both are >= 0): a zero-size x has absmax 0 and is finite.
    absmax = jnp.max(absmax, axis=one, keepdims=keepdims, initial=0.0)
    bad = jnp.max(bad, axis=one, keepdims=keepdims, initial=0.0)
  return absmax, bad == 0
