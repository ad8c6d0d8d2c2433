"""Quantization formats and the plain-jnp quantizers.

Public API: :class:`QTensor`, the formats :class:`Int8Block`, :class:`Int4`
and :class:`Fp8`, :func:`quantize`, :func:`dequantize`,
:func:`fake_quantize`, and the stochastic-rounding hash :func:`random_bits`.
"""

from lowprec_jax.formats._format import Fp8 as Fp8
from lowprec_jax.formats._format import Int4 as Int4
from lowprec_jax.formats._format import Int8Block as Int8Block
from lowprec_jax.formats._format import QuantFormat as QuantFormat
from lowprec_jax.formats._format import Rounding as Rounding
from lowprec_jax.formats._qtensor import QTensor as QTensor
from lowprec_jax.formats._quantize import dequantize as dequantize
from lowprec_jax.formats._quantize import fake_quantize as fake_quantize
from lowprec_jax.formats._quantize import quantize as quantize
from pallas_kernels.numerics import derive_seed as derive_seed
from pallas_kernels.numerics import random_bits as random_bits
from pallas_kernels.numerics import uniform_from_bits as uniform_from_bits
from pallas_kernels.tiles import scale_shape as scale_shape

__all__ = (
  "Fp8",
  "Int4",
  "Int8Block",
  "QTensor",
  "QuantFormat",
  "Rounding",
  "dequantize",
  "derive_seed",
  "fake_quantize",
  "quantize",
  "random_bits",
  "scale_shape",
  "uniform_from_bits",
)
