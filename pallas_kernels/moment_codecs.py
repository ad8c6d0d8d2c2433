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

Non-finite values (the contract of every quantized codec). Group statistics
(absmax, DRE's max and min) are taken over the *finite* elements only, and a
non-finite element is stored as its own code, so an ``inf`` or ``NaN`` moment
affects only its own element, as in float32 Adam. A group without
non-finite elements is encoded exactly as before (no cost). A group with
some is *flagged* by a negative first statistic (``-|s|``, ``-A`` or
``-M``; a flagged group whose finite elements are all zero stores
``-TINY``) and gives up its largest codes, which its finite elements then
never use:

* FP8: ``+fmax`` decodes ``+inf``, ``-fmax`` decodes ``-inf``, the NaN code
  ``NaN``; finite elements are scaled onto ``[-fmax', fmax']``, ``fmax'`` the
  next lower FP8 value (E4M3 416, E5M2 49152). Exact round trip.
* codebooks: the last index decodes ``+inf``, the one below it ``NaN``; the
  finite elements' absmax maps to the third-largest code. ``-inf`` is stored
  as ``NaN`` (for Adam's update both give NaN: a non-finite first moment
  comes with a non-finite second moment, and ``-inf/inf`` is NaN too).

Huge finite outliers (the Adam step calls :func:`tame_outliers` before
encoding quantized moments): a second moment above ``OUTLIER_RATIO`` times
its group's next largest finite one would set the group's scale and flush
the others (or, with DRE, spend the group's range on it). It *saturates*
instead: it is stored as that next largest value, and its first moment is
scaled by the square root of the same factor, so the element keeps its
``m / sqrt(v)`` and the rest of the group is encoded as if the outlier were
not there. (This step's update is computed before; only the stored moments
change. In float32 Adam such an element is frozen for ~``log(ratio) / (1 -
b2)`` steps by its huge v; saturated, it rejoins its group within a few.)

Everything here is kernel-safe: elementwise math, last-axis reductions,
bitcasts, integer shifts; no ``round``/``floor`` (a float-to-int cast of a
positive value floors it), no captured arrays. Codebooks come in as inputs
and are read through a ``Lookup``.
"""

import dataclasses
import functools
import math

import jax.numpy as jnp
import numpy as np
from jax import Array

from pallas_kernels import numerics

# Magnitudes below the smallest normal float32 are treated as zero: XLA and
# Triton may flush denormals, and such moments are irrelevant to an update.
TINY = float(jnp.finfo(jnp.float32).tiny)
F32_MAX = float(jnp.finfo(jnp.float32).max)
# A second moment this many times its group's next largest is an outlier
# (its g about 256x the rest of its group's), tamed by the Adam step.
OUTLIER_RATIO = 2.0**16
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


def _divide(x: Array, d: Array) -> Array:
  """``x / d`` for any finite ``d > 0``, up to float32's max. XLA (and a
  GPU's fast division) divide through ``1/d``, which flushes to zero for
  ``d > 2^126``; above 2^64 both sides are scaled by 2^-64 first (exact,
  and an ``x`` that this flushes is below 2^-126 d anyway)."""
  factor = jnp.where(d > 2.0**64, 2.0**-64, 1.0)
  return (x * factor) / (d * factor)


def _finite_parts(parts) -> tuple[tuple[Array, ...], Array]:
  """Parts with non-finite elements zeroed, and the per-group flag "this
  group holds a non-finite element" (a float max: bool reductions are not
  kernel-safe)."""
  finite = tuple(jnp.where(jnp.isfinite(p), p, 0.0) for p in parts)
  flag = functools.reduce(
    jnp.maximum,
    [jnp.max(jnp.where(jnp.isfinite(p), 0.0, 1.0), axis=-1) for p in parts],
  )
  return finite, flag > 0


def _flagged(stat: Array) -> tuple[Array, Array]:
  """(flag, magnitude) of a stored first statistic (negative: flagged)."""
  stat = stat.astype(jnp.float32)
  return stat < 0, jnp.abs(stat)


def _absmin_nonzero(parts) -> Array:
  """Smallest non-zero magnitude per group (+inf for an all-zero group)."""
  mins = [
    jnp.min(jnp.where(p != 0, jnp.abs(p), float("inf")), axis=-1) for p in parts
  ]
  return functools.reduce(jnp.minimum, mins)


def tame_outliers(m, v):
  """``(m, v)`` parts with each group's huge finite outlier saturated.

  With ``top`` the group's largest finite ``v`` and ``below`` the largest
  finite ``v`` smaller than ``top``: where ``v > OUTLIER_RATIO below`` (so
  ``v = top``) and ``below >= TINY`` (a smaller one counts as zero, as in
  the codecs), ``v' = below`` and ``m' = m sqrt(v' /
  v)``. Every other element, and every group without such an outlier, is
  returned unchanged (the same bits).

  >>> (m,), (v,) = tame_outliers((jnp.array([[1e14, 1e-4, 2e-4]]),),
  ...                            (jnp.array([[1e27, 1e-9, 4e-9]]),))
  >>> print(v, m)  # m / sqrt(v) of the outlier stays 3.16
  [[4.e-09 1.e-09 4.e-09]] [[0.0002 0.0001 0.0002]]
  """
  finite = [jnp.where(jnp.isfinite(p), p, 0.0) for p in v]
  top = functools.reduce(jnp.maximum, [jnp.max(p, axis=-1) for p in finite])
  below = functools.reduce(
    jnp.maximum,
    [jnp.max(jnp.where(p < top[..., None], p, 0.0), axis=-1) for p in finite],
  )[..., None]
  new_m, new_v = [], []
  for mi, vi, fi in zip(m, v, finite):
    huge = (fi > OUTLIER_RATIO * below) & (below >= TINY)
    # sqrt of each side: v' / v alone may underflow (v near float32's max)
    factor = jnp.sqrt(below) / jnp.sqrt(jnp.where(huge, fi, 1.0))
    new_m.append(jnp.where(huge, mi * factor, mi))
    new_v.append(jnp.where(huge, below, vi))
  return tuple(new_m), tuple(new_v)


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
  Non-finite elements: the module docstring (``M`` and ``m`` are over the
  finite elements; ``±fmax`` codes are ``±inf`` in a flagged group).
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

  @property
  def fmax_flagged(self) -> float:
    """The largest magnitude a flagged group's finite elements may take:
    the FP8 value just below ``fmax`` (whose codes then mean ``±inf``)."""
    top = np.array(self.fmax, jnp.dtype(self.dtype)).view(np.uint8)
    return float((top - 1).view(jnp.dtype(self.dtype)))

  def _fmax(self, flag) -> Array:
    return jnp.where(flag, self.fmax_flagged, self.fmax)

  def _per_fmax(self, x, flag) -> Array:
    """``x / fmax`` (``fmax_flagged`` in a flagged group), each a division by
    a constant, so unflagged groups keep their bits (XLA may rewrite a
    division by a constant, not by a selected array)."""
    return jnp.where(flag, x / self.fmax_flagged, x / self.fmax)

  def _params(self, amax, amin, flag):
    """(s, k, c) from the group's max and non-zero min finite magnitudes."""
    zero = amax < TINY
    hi = jnp.where(zero, 1.0, amax)
    if not self.expand:
      return self._per_fmax(hi, flag), None, None
    flat = zero | (amin >= amax)
    lo = jnp.where(flat, hi, jnp.maximum(amin, TINY))
    log_ratio = jnp.where(flat, 1.0, jnp.log2(hi) - jnp.log2(lo))
    target = K_STEPS * math.log2(self.fmax**2 / 2)
    k16 = jnp.clip(target / log_ratio, 1.0, K16_MAX).astype(jnp.int32)
    k = jnp.where(flat, 1.0, k16.astype(jnp.float32) / K_STEPS)
    c = jnp.sqrt(hi) * jnp.sqrt(lo)
    s = self._per_fmax(jnp.exp2(k * jnp.log2(_divide(hi, c))), flag)
    return s, k, c

  def _stats_params(self, stats):
    """(s, k, c, flag) from stored stats (k, c None without expansion)."""
    flag, first = _flagged(stats[0])
    if not self.compact:
      k, c = (stats[1], stats[2]) if self.expand else (None, None)
      return first, k, c, flag
    amin = stats[1].astype(jnp.float32) if self.expand else None
    return *self._params(first, amin, flag), flag

  def encode(self, parts, lookup):
    del lookup
    finite, flag = _finite_parts(parts)
    amax = _absmax(finite)
    amin = jnp.minimum(_absmin_nonzero(finite), amax) if self.expand else None
    if self.compact:
      high = numerics.round_to_bf16(amax, up=True)
      stored = jnp.where(flag, -jnp.maximum(high, TINY), high)
      stats = (stored.astype(jnp.bfloat16),)
      if self.expand:  # equal magnitudes stay equal after rounding
        low = numerics.round_to_bf16(amin, up=False)
        stats += (jnp.where(amin >= amax, high, low).astype(jnp.bfloat16),)
      s, k, c, _ = self._stats_params(stats)
    else:
      s, k, c = self._params(amax, amin, flag)
      stored = jnp.where(flag, -s, s)
      stats = (stored, k, c) if self.expand else (stored,)
    codes = tuple(self._quantize(p, s, k, c, flag) for p in parts)
    return codes, stats

  def _quantize(self, x, s, k, c, flag):
    finite = jnp.isfinite(x)
    y = jnp.where(finite, x, 0.0)
    if self.expand:
      a = jnp.abs(y)
      t = _divide(a, c[..., None])
      e = jnp.exp2(k[..., None] * jnp.log2(jnp.where(a > 0, t, 1.0)))
      y = jnp.where(a > 0, jnp.where(y < 0, -e, e), 0.0)
    limit = self._fmax(flag)[..., None]
    y = jnp.clip(y / s[..., None], -limit, limit)
    special = jnp.where(jnp.isnan(x), jnp.nan, jnp.sign(x) * self.fmax)
    return jnp.where(finite, y, special).astype(self.dtype)

  def decode(self, codes, stats, lookup):
    del lookup
    s, k, c, flag = self._stats_params(stats)
    out = []
    for q in codes:
      qf = q.astype(jnp.float32)
      t = qf * s[..., None]
      if self.expand:
        a = jnp.abs(t)
        root = jnp.exp2(jnp.log2(jnp.where(a > 0, a, 1.0)) / k[..., None])
        mag = jnp.where(a > 0, c[..., None] * root, 0.0)
        t = jnp.where(t < 0, -mag, mag)
      infinite = flag[..., None] & (jnp.abs(qf) == self.fmax)
      t = jnp.where(infinite, jnp.sign(qf) * jnp.inf, t)
      out.append(jnp.where(jnp.isnan(qf), jnp.nan, t))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class CodebookCodec:
  """Blockwise absmax scaling onto a sorted codebook of ``2**bits`` codes.

  ``A`` = max|x| of the group, ``i = nearest(x / A)`` (uint8 index into the
  sorted codebook), ``x' = codebook[i] A``. An all-zero group keeps A = 0 and
  divides by 1. 4-bit indices are packed two per byte (halves of a group).
  Non-finite elements: the module docstring (the two top indices).
  """

  bits: int = 8
  stat_dtypes = ("float32",)

  @property
  def packed(self) -> bool:
    return self.bits == 4

  @property
  def top(self) -> int:
    """The last index (``+inf`` in a flagged group; ``top - 1`` is NaN)."""
    return 2**self.bits - 1

  def encode(self, parts, lookup):
    finite, flag = _finite_parts(parts)
    absmax = _absmax(finite)
    reserved = jnp.maximum(absmax / lookup.value(self.top - 2), TINY)
    reserved = jnp.minimum(reserved, F32_MAX)  # absmax near float32's max
    scale = jnp.where(flag, reserved, absmax)
    safe = jnp.where(scale > 0, scale, 1.0)[..., None]
    idx = [
      jnp.where(
        jnp.isfinite(p),
        lookup.nearest(_divide(f, safe)),
        jnp.where(p == jnp.inf, self.top, self.top - 1),
      )
      for p, f in zip(parts, finite)
    ]
    stat = (jnp.where(flag, -scale, absmax),)
    if self.packed:
      return ((idx[0] | (idx[1] << 4)).astype(jnp.uint8),), stat
    return tuple(i.astype(jnp.uint8) for i in idx), stat

  def decode(self, codes, stats, lookup):
    if self.packed:
      byte = codes[0].astype(jnp.int32)
      idx = (byte & 15, byte >> 4)
    else:
      idx = tuple(c.astype(jnp.int32) for c in codes)
    flag, scale = _flagged(stats[0])
    flag = flag[..., None]
    out = []
    for i in idx:
      value = lookup.value(i) * scale[..., None]
      value = jnp.where(flag & (i == self.top - 1), jnp.nan, value)
      out.append(jnp.where(flag & (i == self.top), jnp.inf, value))
    return tuple(out)
