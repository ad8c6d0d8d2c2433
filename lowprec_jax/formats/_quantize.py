"""quantize / dequantize in plain jnp: the reference every kernel must match.

For a tensor ``x`` and a format with tile ``T`` and grid maximum ``qmax``:

    absmax = max_{tile} |x|
    scale  = 1                                   if absmax == 0
           = NaN                                 if absmax is NaN or inf
           = clip(absmax * RN(1/qmax), 2^-126, S_max)  otherwise
    y      = x * RN(1 / scale)          (fp32, one exact reciprocal per tile)
    q      = round(y)                   (nearest-even or stochastic)
    x_hat  = q * scale

Special values, each tested:

* an all-zero tile gets scale 1 and zero codes (never 0/0);
* NaN or +-inf anywhere in a tile poisons that tile: its scale is NaN and its
  codes are 0, so it dequantizes to NaN and a GEMM that reads it returns NaN
  where it is used. Silent saturation of an overflow would hide divergence;
* huge finite magnitudes (up to float32 max) quantize normally; the scale is
  capped at ``S_max = RD(f32max / qmax)`` so that ``qmax * scale`` never
  exceeds float32 max, so they dequantize to finite values;
* subnormal float32 inputs are flushed to zero by XLA on CPU and GPU, so
  they quantize like zeros;
* tiny magnitudes: the scale is floored at 2^-126 (the smallest normal
  float32), so a tile whose absmax is below ``qmax * 2^-126`` keeps the
  absolute error bound ``scale / 2`` but loses relative precision, and the
  reciprocal never overflows.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from lowprec_jax.formats._format import ROUNDINGS, QuantFormat, Rounding
from lowprec_jax.formats._hash import random_bits, uniform_from_bits
from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.formats._rounding import round_fp8, round_int
from lowprec_jax.formats._tiles import (
  element_coordinates,
  expand_scale,
  tile_absmax,
)
from pallas_kernels._rounding import reciprocal_rn

SCALE_FLOOR = 2.0**-126
FLOAT_DTYPES = (
  np.dtype(jnp.float32),
  np.dtype(jnp.bfloat16),
  np.dtype(np.float16),
)


def describe(x) -> str:
  """'shape (2, 3) and dtype float32' for error messages."""
  shape = tuple(getattr(x, "shape", ()))
  dtype = getattr(x, "dtype", type(x).__name__)
  return f"shape {shape} and dtype {dtype}"


def check_float_array(name: str, x) -> None:
  """Raises ValueError unless ``x`` is a float32/bfloat16/float16 array."""
  dtype = getattr(x, "dtype", None)
  if dtype is None or np.dtype(dtype) not in FLOAT_DTYPES:
    raise ValueError(
      f"{name} has {describe(x)}; expected a float32, bfloat16 or float16 array"
    )


def as_seed(seed, name: str = "seed") -> Array:
  """Converts an int, an integer scalar array or a PRNG key to a uint32 seed."""
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    return jnp.asarray(int(seed) & 0xFFFFFFFF, jnp.uint32)
  dtype = getattr(seed, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    if seed.shape != ():
      raise ValueError(
        f"{name} must be a single PRNG key, got {describe(seed)}"
      )
    return jax.random.bits(seed, (), jnp.uint32)
  if dtype is not None and jnp.issubdtype(dtype, jnp.integer):
    if seed.shape != ():
      raise ValueError(f"{name} must be a scalar, got {describe(seed)}")
    return jnp.asarray(seed).astype(jnp.uint32)
  raise ValueError(
    f"{name} has {describe(seed)}; expected an int, an integer scalar array "
    "or a jax.random key"
  )


def max_scale(qmax: float) -> np.float32:
  """The largest fp32 scale with ``qmax * scale <= float32 max``.

  ``RN(f32max / qmax)`` can round up, and then the top code dequantizes to
  inf; capping at the rounded-down quotient keeps every dequantized finite
  value finite.
  """
  f32max = float(np.finfo(np.float32).max)
  cap = np.float32(f32max / qmax)
  while float(cap) * qmax > f32max:
    cap = np.nextafter(cap, np.float32(0))
  return cap


def _round_up_to_bf16(scale: Array) -> Array:
  """Smallest bfloat16 value >= each positive finite fp32 ``scale``.

  bf16 is the top half of an fp32 bit pattern, so adding 0xFFFF and clearing
  the low half rounds a positive value up (and leaves bf16 values alone).
  """
  bits = lax.bitcast_convert_type(scale, jnp.uint32)
  bits = (bits + jnp.uint32(0xFFFF)) & jnp.uint32(0xFFFF0000)
  return lax.bitcast_convert_type(bits, jnp.float32)


def compute_scale(absmax: Array, qmax: float, scale_dtype=np.float32) -> Array:
  """fp32 scale per tile from its absmax (see the module docstring).

  With ``scale_dtype=bfloat16`` the scale is rounded up to a bf16 value (and
  the cap down to one), so it is stored exactly and ``absmax / scale`` stays
  within ``qmax``; the result is still returned as fp32.
  """
  cap = max_scale(qmax)
  # absmax * RN(1/qmax), written out: XLA rewrites a division by a constant
  # into this product under jit but not in eager mode, and the kernels must
  # produce the same bits in both.
  scale = jnp.maximum(absmax * np.float32(1.0 / qmax), jnp.float32(SCALE_FLOOR))
  if np.dtype(scale_dtype) == np.dtype(jnp.bfloat16):
    # round the cap down to bf16: clear the low half of its bit pattern
    cap = (np.asarray(cap).view(np.uint32) & np.uint32(0xFFFF0000)).view(
      np.float32
    )
    scale = _round_up_to_bf16(scale)
  scale = jnp.minimum(scale, cap)
  scale = jnp.where(absmax == 0, jnp.float32(1.0), scale)
  return jnp.where(jnp.isfinite(absmax), scale, jnp.float32(jnp.nan))


def quantize(
  x: Array,
  format: QuantFormat,
  *,
  rounding: Rounding = "nearest",
  seed=None,
) -> QTensor:
  """Quantizes ``x`` to ``format``.

  Args:
    x: float32, bfloat16 or float16 array of any shape.
    format: e.g. ``Int8Block(32)`` or ``Fp8.groups(128)``.
    rounding: "nearest" (ties to even) or "stochastic".
    seed: required for stochastic rounding: an int, uint32 scalar or PRNG
      key. The noise of element ``(row, col)`` is a hash of
      ``(seed, row, col)``: the same seed gives the same bits.

  Returns:
    A :class:`QTensor` whose ``dequantize()`` returns ``x``'s dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from lowprec_jax.formats import Int8Block, quantize
    >>> qt = quantize(jnp.array([[0.0, 63.5, -127.0]]), Int8Block(32))
    >>> qt.qvalue.tolist(), qt.scale.tolist()  # 63.5 ties to even
    ([[0, 64, -127]], [[1.0]])
  """
  check_float_array("x", x)
  if not isinstance(format, QuantFormat):
    raise ValueError(
      f"format must be a QuantFormat (Int8Block, Fp8), got {format!r}"
    )
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
  if rounding == "stochastic" and seed is None:
    raise ValueError("rounding='stochastic' needs a seed (int or PRNG key)")
  x32 = jnp.asarray(x, jnp.float32)
  scale = compute_scale(
    tile_absmax(x32, format.tile), format.qmax, format.scale_dtype
  )
  # RN(1/scale) by integer arithmetic: XLA:GPU (like Mosaic GPU and Triton)
  # divides approximately, and every implementation must get the same bits.
  # One reciprocal per tile, so the cost does not matter.
  inverse = jnp.where(jnp.isnan(scale), jnp.nan, reciprocal_rn(scale))
  inverse = expand_scale(inverse, format.tile, x32.shape)
  y = x32 * inverse
  u = None
  if rounding == "stochastic":
    row, col = element_coordinates(x32.shape)
    u = uniform_from_bits(random_bits(as_seed(seed), row, col))
  if format.family == "int8":
    codes = round_int(y, format.qmax, u)
  else:
    codes = round_fp8(y, format.storage_dtype, u)
  finite = jnp.isfinite(inverse)
  codes = jnp.where(finite, codes, jnp.zeros((), codes.dtype))
  return QTensor(
    codes.astype(format.storage_dtype),
    scale.astype(format.scale_dtype),
    format,
    np.dtype(x.dtype),
  )


def dequantize(qt: QTensor, dtype=None) -> Array:
  """Returns ``qt.qvalue * qt.scale`` (per tile) in ``dtype`` (default qt.dtype)."""
  if not isinstance(qt, QTensor):
    raise ValueError(f"dequantize expects a QTensor, got {type(qt).__name__}")
  return qt.validate().dequantize(dtype)


def fake_quantize(
  x: Array, format: QuantFormat, *, rounding: Rounding = "nearest", seed=None
) -> Array:
  """``dequantize(quantize(x))`` in x's dtype: the values a GEMM really sees."""
  return quantize(x, format, rounding=rounding, seed=seed).dequantize()
