"""Codecs of quantized optimizer moments: the format math on raw arrays.

A codec turns the fp32 values of groups into ``(codes, stats)`` and back.
Values arrive as *parts*: the two halves of every group (``(..., G/2)``
each), so that packed 4-bit codes hold element ``j`` (low nibble) and ``j +
G/2`` (high nibble) of a group without interleaving. Statistics are per
group (``(...)``, the group axis reduced).

* ``PlainCodec``: unquantized, stored in a float dtype.
* ``Fp8DreCodec``: COAT's FP8 with dynamic range expansion (or plain
  per-group FP8), faithful or compact metadata.
* ``CodebookCodec``: blockwise absmax onto a sorted codebook (8 or 4 bits).

Everything here is kernel-safe: elementwise math, last-axis reductions,
bitcasts, integer shifts; no ``round``/``floor`` (a float-to-int cast of a
positive value floors it), no captured arrays. Codebooks come in as inputs
and are read through a ``Lookup``.
"""

import dataclasses
import functools
import math

import jax.numpy as jnp
from jax import Array

from pallas_kernels import numerics

# Magnitudes below the smallest normal float32 are treated as zero: XLA and
# Triton may flush denormals, and such moments are irrelevant to an update.
TINY = float(jnp.finfo(jnp.float32).tiny)
# k is kept on a 1/16 grid and below 2**16 (an int32-safe floor).
K_STEPS = 16
K16_MAX = 2**20

# --------------------------------------------------------------- lookups ----


@dataclasses.dataclass(frozen=True)
class Lookup:
  """Reads a sorted codebook: ``value(i)`` and ``nearest(x)`` (an index).

  ``nearest(x)`` is the number of midpoints strictly below ``x``: the index
  of the nearest code, ties to the lower one.
  """

  value: object
  nearest: object


def array_lookup(*tables: Array) -> Lookup | None:
  """Lookup over ``(codebook, midpoints)`` arrays (the reference): ``take``
  and ``searchsorted``; None without tables (a codec without a codebook)."""
  if not tables:
    return None
  codebook, midpoints = tables
  return Lookup(
    value=lambda i: jnp.take(codebook, i),
    nearest=lambda x: jnp.searchsorted(midpoints, x, side="left").astype(
      jnp.int32
    ),
  )


def ref_lookup(codebook_ref, midpoints_ref, bits: int) -> Lookup:
  """Lookup over kernel refs: gathers and an unrolled binary search."""

  def nearest(x):
    count = jnp.zeros(x.shape, jnp.int32)
    for b in reversed(range(bits)):  # steps 2^(bits-1), ..., 1
      probe = midpoints_ref[count + (2**b - 1)]
      count = jnp.where(probe < x, count + 2**b, count)
    return count

  return Lookup(value=lambda i: codebook_ref[i], nearest=nearest)


# ---------------------------------------------------------------- codecs ----


@dataclasses.dataclass(frozen=True)
class PlainCodec:
  """An unquantized moment stored in ``dtype`` (codes are the values)."""

  dtype: str = "float32"
  packed = False
  stat_dtypes = ()

  def decode(self, codes, stats, lookup):
    del stats, lookup
    return tuple(c.astype(jnp.float32) for c in codes)

  def encode(self, parts, lookup):
    del lookup
    return tuple(p.astype(self.dtype) for p in parts), ()


def split_parts(x: Array, codec=None) -> tuple[Array, ...]:
  """Values or unpacked codes as two halves of each group; packed codes whole."""
  if codec is not None and codec.packed:
    return (x,)
  half = x.shape[-1] // 2
  return (x[..., :half], x[..., half:])


def _absmax(parts) -> Array:
  return functools.reduce(
    jnp.maximum, [jnp.max(jnp.abs(p), axis=-1) for p in parts]
  )


def _absmin_nonzero(parts) -> Array:
  """Smallest non-zero magnitude per group (+inf for an all-zero group)."""
  mins = [
    jnp.min(jnp.where(p != 0, jnp.abs(p), float("inf")), axis=-1) for p in parts
  ]
  return functools.reduce(jnp.minimum, mins)


@dataclasses.dataclass(frozen=True)
class Fp8DreCodec:
  """COAT's FP8 moment with dynamic range expansion, per group.

  With ``M`` = max|x| and ``m`` = min over non-zero |x| of the group::

      R = M / m,  c = sqrt(M) sqrt(m),  L = log2(fmax^2 / 2)
      k = floor(16 L / log2 R) / 16,  clipped to [1/16, 2^16]
      y = sign(x) (|x| / c)^k,  s = (M / c)^k / fmax,  q = fp8(clip(y / s))
      x' = sign(q) c (|q| s)^(1/k)

  so the group spans at most ``fmax^2 / 2`` after expansion and its smallest
  element lands at or above ``2 / fmax`` (E4M3: 0.0045 > 2^-9; E5M2:
  3.5e-5 > 2^-16, the smallest subnormals). Guards: an all-zero group
  (M < 2^-126) gets k = 1, c = 1 and zero codes; a group whose non-zero
  magnitudes are all equal (m = M) gets k = 1, c = M, so y = ±1 and
  q = ±fmax, which decodes to exactly ±M. Without ``expand`` this is plain
  per-group FP8: ``s = M / fmax``, ``q = fp8(x / s)``.

  Stats: faithful ``(s, k, c)`` in float32; compact ``(M, m)`` in bfloat16,
  M rounded up and m down (so every element stays inside the stored range;
  m = M is kept when the magnitudes are all equal) and k, c, s recomputed
  from the stored values on both encode and decode. A compact constant group
  therefore decodes to ±M rounded up to bfloat16 (relative error < 2^-7).
  """

  dtype: str = "float8_e4m3fn"
  expand: bool = True
  compact: bool = False
  packed = False

  @property
  def stat_dtypes(self) -> tuple[str, ...]:
    if self.compact:
      return ("bfloat16",) * (2 if self.expand else 1)
    return ("float32",) * (3 if self.expand else 1)

  @property
  def fmax(self) -> float:
    return float(jnp.finfo(self.dtype).max)

  def _params(self, amax, amin):
    """(s, k, c) from the group's max and non-zero min magnitudes."""
    zero = amax < TINY
    hi = jnp.where(zero, 1.0, amax)
    if not self.expand:
      return hi / self.fmax, None, None
    flat = zero | (amin >= amax)
    lo = jnp.where(flat, hi, jnp.maximum(amin, TINY))
    log_ratio = jnp.where(flat, 1.0, jnp.log2(hi) - jnp.log2(lo))
    target = K_STEPS * math.log2(self.fmax**2 / 2)
    k16 = jnp.clip(target / log_ratio, 1.0, K16_MAX).astype(jnp.int32)
    k = jnp.where(flat, 1.0, k16.astype(jnp.float32) / K_STEPS)
    c = jnp.sqrt(hi) * jnp.sqrt(lo)
    s = jnp.exp2(k * jnp.log2(hi / c)) / self.fmax
    return s, k, c

  def _stats_params(self, stats):
    if not self.compact:
      return (stats[0], *((stats[1], stats[2]) if self.expand else (None,) * 2))
    amax = stats[0].astype(jnp.float32)
    amin = stats[1].astype(jnp.float32) if self.expand else None
    return self._params(amax, amin)

  def encode(self, parts, lookup):
    del lookup
    amax = _absmax(parts)
    amin = jnp.minimum(_absmin_nonzero(parts), amax) if self.expand else None
    if self.compact:
      high = numerics.round_to_bf16(amax, up=True).astype(jnp.bfloat16)
      stats = (high,)
      if self.expand:  # equal magnitudes stay equal after rounding
        low = numerics.round_to_bf16(amin, up=False).astype(jnp.bfloat16)
        stats += (jnp.where(amin >= amax, high, low),)
      s, k, c = self._stats_params(stats)
    else:
      s, k, c = self._params(amax, amin)
      stats = (s, k, c) if self.expand else (s,)
    codes = tuple(self._quantize(p, s, k, c) for p in parts)
    return codes, stats

  def _quantize(self, x, s, k, c):
    if self.expand:
      a = jnp.abs(x)
      t = a / c[..., None]
      y = jnp.exp2(k[..., None] * jnp.log2(jnp.where(a > 0, t, 1.0)))
      x = jnp.where(a > 0, jnp.where(x < 0, -y, y), 0.0)
    y = jnp.clip(x / s[..., None], -self.fmax, self.fmax)
    return y.astype(self.dtype)

  def decode(self, codes, stats, lookup):
    del lookup
    s, k, c = self._stats_params(stats)
    out = []
    for q in codes:
      t = q.astype(jnp.float32) * s[..., None]
      if self.expand:
        a = jnp.abs(t)
        root = jnp.exp2(jnp.log2(jnp.where(a > 0, a, 1.0)) / k[..., None])
        mag = jnp.where(a > 0, c[..., None] * root, 0.0)
        t = jnp.where(t < 0, -mag, mag)
      out.append(t)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class CodebookCodec:
  """Blockwise absmax scaling onto a sorted codebook of ``2**bits`` codes.

  ``A`` = max|x| of the group, ``i = nearest(x / A)`` (uint8 index into the
  sorted codebook), ``x' = codebook[i] A``. An all-zero group keeps A = 0 and
  divides by 1. 4-bit indices are packed two per byte (halves of a group).
  """

  bits: int = 8
  stat_dtypes = ("float32",)

  @property
  def packed(self) -> bool:
    return self.bits == 4

  def encode(self, parts, lookup):
    absmax = _absmax(parts)
    safe = jnp.where(absmax > 0, absmax, 1.0)[..., None]
    idx = [lookup.nearest(p / safe) for p in parts]
    if self.packed:
      return ((idx[0] | (idx[1] << 4)).astype(jnp.uint8),), (absmax,)
    return tuple(i.astype(jnp.uint8) for i in idx), (absmax,)

  def decode(self, codes, stats, lookup):
    if self.packed:
      byte = codes[0].astype(jnp.int32)
      idx = (byte & 15, byte >> 4)
    else:
      idx = tuple(c.astype(jnp.int32) for c in codes)
    return tuple(lookup.value(i) * stats[0][..., None] for i in idx)
