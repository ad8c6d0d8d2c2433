"""quantize / dequantize: the library's entry to the one jnp quantizer.

For a tensor ``x`` and a format with tile ``T`` and grid maximum ``qmax``
(the rule of :mod:`pallas_kernels.numerics`, computed by
:func:`pallas_kernels.quantize_reference.quantize_array`, which every
kernel must match bit for bit):

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

import numpy as np
from jax import Array

from lowprec_jax.formats._format import QuantFormat, Rounding
from lowprec_jax.formats._qtensor import QTensor
from pallas_kernels.checks import as_seed, check_float_array, check_rounding
from pallas_kernels.quantize_reference import quantize_array


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
      f"format must be a QuantFormat (Int8Block, Int4, Fp8), got {format!r}"
    )
  check_rounding(rounding)
  format.stored_shape(x.shape)  # ValueError if the codes cannot be stored
  if rounding == "stochastic" and seed is None:
    raise ValueError("rounding='stochastic' needs a seed (int or PRNG key)")
  seed = as_seed(seed) if rounding == "stochastic" else None
  codes, scale = quantize_array(
    x,
    seed,
    grid=format.grid,
    tile=format.tile,
    scale_dtype=format.scale_dtype,
  )
  return QTensor(format.pack(codes), scale, format, np.dtype(x.dtype))


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
