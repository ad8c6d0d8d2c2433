"""Storage formats for optimizer moments and the quantized-moment pytree.

A format quantizes one fp32 moment leaf in groups of ``group`` consecutive
elements of the flattened parameter (COAT and bitsandbytes both group the
flattened tensor). Layout, chosen so that states shard like their parameters:

* **aligned** (the last axis is a multiple of ``group``): groups are the
  ``group``-chunks of each row, which are exactly the chunks of the flattened
  parameter. Codes keep the parameter's shape (4-bit: last axis halved) and
  stats have shape ``shape[:-1] + (shape[-1] // group,)``, so both take the
  parameter's own ``PartitionSpec``; a shard boundary on the last axis is a
  group boundary when the per-shard extent is a multiple of ``group``.
* **flat** (any other shape, 0-d and 1-d included): the flattened parameter is
  zero-padded to a multiple of ``group``; codes are ``(groups, group)`` and
  stats ``(groups,)``. Zero padding changes no group statistic (zeros are
  excluded from DRE's minimum and never raise an absmax).

The numerics live in :mod:`pallas_kernels.moment_codecs` (shared with the
fused kernel); this module holds the user-facing formats, the pytree, and
the exact byte counts.
"""

import abc
import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from lowprec_jax.optim import _codebooks
from pallas_kernels import moment_codecs as mc

_FP8_DTYPES = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def _check_group(group) -> None:
  if not isinstance(group, int) or group < 32 or group & (group - 1):
    raise ValueError(f"group must be a power of two >= 32, got {group!r}")


class MomentFormat(abc.ABC):
  """How one moment leaf is stored. Subclasses are frozen dataclasses."""

  group: int

  @abc.abstractmethod
  def codec(self):
    """The static codec of :mod:`pallas_kernels.moment_codecs`."""

  @abc.abstractmethod
  def stat_names(self) -> tuple[str, ...]:
    """Names of the per-group statistics, in codec order."""

  @property
  @abc.abstractmethod
  def code_dtype(self) -> np.dtype:
    """Storage dtype of the codes."""

  @property
  @abc.abstractmethod
  def signed(self) -> bool:
    """Whether negative values are representable (first moments need it)."""

  def tables(self) -> tuple[Array, ...]:
    """Kernel inputs (a codebook and its midpoints), or ``()``."""
    return ()

  @property
  def code_width(self) -> int:
    """Bytes of codes per group."""
    return self.group


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fp8Dre(MomentFormat):
  """FP8 moment with COAT's dynamic range expansion (DRE), per group.

  Math (per group of ``group`` elements, ``fmax`` the format's largest
  finite value): ``k = floor(16 log2(fmax^2/2) / log2(max/min)) / 16``,
  ``c = sqrt(max) sqrt(min)`` (min over non-zero magnitudes),
  ``q = fp8(sign(x) (|x|/c)^k / s)`` with ``s = (max/c)^k / fmax``; decoded
  as ``sign(q) c (|q| s)^(1/k)``. E4M3 targets ``448^2/2`` exactly as COAT;
  E5M2 targets its own ``57344^2/2``. See ``pallas_kernels.moment_codecs.
  Fp8DreCodec`` for the guards.

  Args:
    dtype: ``"e4m3"`` or ``"e5m2"``.
    group: elements per group (COAT: 128).
    expand: apply DRE; False gives plain per-group FP8 (absmax scaling).
    compact: store only the group's (max, min) magnitudes in bfloat16 (max
      rounded up, min down) instead of float32 (scale, k, centre); k, centre
      and scale are recomputed from the stored values on write and read.
      bfloat16 because moments span far more than float16's range.
  """

  dtype: Literal["e4m3", "e5m2"] = "e4m3"
  group: int = 128
  expand: bool = True
  compact: bool = False

  def __post_init__(self):
    if self.dtype not in _FP8_DTYPES:
      raise ValueError(
        f"Fp8Dre dtype must be one of {sorted(_FP8_DTYPES)}, got {self.dtype!r}"
      )
    _check_group(self.group)

  def codec(self):
    return mc.Fp8DreCodec(_FP8_DTYPES[self.dtype], self.expand, self.compact)

  def stat_names(self):
    if self.compact:
      return ("max", "min") if self.expand else ("max",)
    return ("scale", "k", "centre") if self.expand else ("scale",)

  @property
  def code_dtype(self):
    return np.dtype(_FP8_DTYPES[self.dtype])

  @property
  def signed(self):
    return True


@dataclasses.dataclass(frozen=True, kw_only=True)
class Codebook(MomentFormat):
  """Blockwise absmax scaling onto a fixed codebook (bitsandbytes-style).

  ``A = max |x|`` per group, ``i = nearest(x / A)`` in the sorted codebook,
  ``x' = codebook[i] A``; codes are uint8 indices (4-bit: two per byte).

  Args:
    bits: 8 or 4.
    map: ``"dynamic"`` (the dynamic tree map; signed for first moments,
      unsigned for second moments) or ``"linear"`` (``j / 2^bits``,
      ``j = 1..2^bits``: no zero code, for second moments only).
    signed: whether the map covers negative values.
    group: elements per group (bitsandbytes calls it the block size).
  """

  bits: int = 8
  map: Literal["dynamic", "linear"] = "dynamic"
  signed: bool = True
  group: int = 256

  def __post_init__(self):
    if self.bits not in (4, 8):
      raise ValueError(f"Codebook bits must be 4 or 8, got {self.bits!r}")
    if self.map not in ("dynamic", "linear"):
      raise ValueError(
        f"Codebook map must be 'dynamic' or 'linear', got {self.map!r}"
      )
    if self.map == "linear" and self.signed:
      raise ValueError(
        "Codebook map='linear' has no negative codes; use signed=False"
      )
    _check_group(self.group)

  def values(self) -> tuple[float, ...]:
    if self.map == "linear":
      return _codebooks.linear_nonzero_map(self.bits)
    return _codebooks.dynamic_map(self.bits, self.signed)

  def codec(self):
    return mc.CodebookCodec(self.bits)

  def tables(self):
    return tuple(jnp.asarray(t) for t in _codebooks.tables(self.values()))

  def stat_names(self):
    return ("absmax",)

  @property
  def code_dtype(self):
    return np.dtype(np.uint8)

  @property
  def code_width(self):
    return self.group * self.bits // 8


# ----------------------------------------------------------------- layout ----


@dataclasses.dataclass(frozen=True)
class GroupLayout:
  """Where the groups of a parameter of ``shape`` lie (module docstring)."""

  shape: tuple[int, ...]
  group: int

  @property
  def aligned(self) -> bool:
    return len(self.shape) >= 1 and self.shape[-1] % self.group == 0

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def num_groups(self) -> int:
    return -(-self.size // self.group)

  def stats_shape(self) -> tuple[int, ...]:
    if self.aligned:
      return self.shape[:-1] + (self.shape[-1] // self.group,)
    return (self.num_groups,)

  def codes_shape(self, width: int) -> tuple[int, ...]:
    if self.aligned:
      return self.shape[:-1] + (self.shape[-1] // self.group * width,)
    return (self.num_groups, width)

  def view(self, x: Array) -> Array:
    """A parameter-shaped ``x`` as groups: ``stats_shape + (group,)``."""
    if self.aligned:
      return x.reshape(self.stats_shape() + (self.group,))
    flat = x.reshape(-1)
    return jnp.pad(flat, (0, self.num_groups * self.group - flat.size)).reshape(
      self.num_groups, self.group
    )

  def view_codes(self, codes: Array, width: int) -> Array:
    """Stored codes as ``stats_shape + (width,)``."""
    return codes.reshape(self.stats_shape() + (width,))

  def unview(self, x: Array) -> Array:
    """Inverse of :meth:`view` for parameter-shaped values."""
    if self.aligned:
      return x.reshape(self.shape)
    return x.reshape(-1)[: self.size].reshape(self.shape)

  def unview_codes(self, x: Array, width: int) -> Array:
    return x.reshape(self.codes_shape(width))


# ----------------------------------------------------------------- pytree ----


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedMoment:
  """A quantized moment leaf: codes, named per-group stats, static format.

  ``shape`` is the parameter's shape; codes and stats follow the layout of
  :class:`GroupLayout`. ``dequantize()`` returns the float32 moment.
  """

  codes: Array
  stats: dict[str, Array]
  format: MomentFormat = dataclasses.field(metadata=dict(static=True))
  shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

  @property
  def layout(self) -> GroupLayout:
    return GroupLayout(self.shape, self.format.group)

  def stats_tuple(self) -> tuple[Array, ...]:
    return tuple(self.stats[n] for n in self.format.stat_names())

  def dequantize(self) -> Array:
    return _dequantize(self)


@jax.jit
def _dequantize(q: QuantizedMoment) -> Array:
  fmt, layout = q.format, q.layout
  codec = fmt.codec()
  codes = mc.split_parts(layout.view_codes(q.codes, fmt.code_width), codec)
  parts = codec.decode(codes, q.stats_tuple(), mc.array_lookup(*fmt.tables()))
  return layout.unview(jnp.concatenate(parts, axis=-1))


def from_codes(codes, stats, fmt: MomentFormat, shape) -> QuantizedMoment:
  """Wraps codec output (codes in view layout) as a :class:`QuantizedMoment`."""
  layout = GroupLayout(tuple(shape), fmt.group)
  return QuantizedMoment(
    codes=layout.unview_codes(codes, fmt.code_width),
    stats=dict(zip(fmt.stat_names(), stats)),
    format=fmt,
    shape=tuple(shape),
  )


@functools.partial(jax.jit, static_argnames="fmt")
def quantize_moment(x: Array, fmt: MomentFormat) -> QuantizedMoment:
  """Quantizes a float moment ``x`` (any shape) with ``fmt`` (plain jnp)."""
  check_float(x, "x")
  layout = GroupLayout(tuple(x.shape), fmt.group)
  parts = mc.split_parts(layout.view(x.astype(jnp.float32)))
  codes, stats = fmt.codec().encode(parts, mc.array_lookup(*fmt.tables()))
  return from_codes(jnp.concatenate(codes, axis=-1), stats, fmt, x.shape)


def zeros_moment(shape, fmt: MomentFormat) -> QuantizedMoment:
  """The quantized all-zero moment (what ``quantize_moment`` gives for 0)."""
  return quantize_moment(jnp.zeros(shape, jnp.float32), fmt)


def check_float(x, name: str) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
      f"{name} must be a floating-point array to have quantized optimizer "
      f"states; got shape {tuple(x.shape)} dtype {x.dtype}"
    )


def moment_nbytes(shape, fmt: MomentFormat | None, dtype=jnp.float32) -> int:
  """Exact bytes of one moment leaf of a parameter of ``shape``."""
  if fmt is None:
    return math.prod(shape) * np.dtype(dtype).itemsize
  layout = GroupLayout(tuple(shape), fmt.group)
  codes = math.prod(layout.codes_shape(fmt.code_width))
  stats = math.prod(layout.stats_shape())
  stat_bytes = sum(np.dtype(d).itemsize for d in fmt.codec().stat_dtypes)
  return codes * fmt.code_dtype.itemsize + stats * stat_bytes
