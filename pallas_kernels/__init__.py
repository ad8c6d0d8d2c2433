"""Pallas kernels on raw arrays for lowprec_jax's quantized training.

This package imports nothing from ``lowprec_jax``: kernels take codes, scales
and static block sizes, and ``lowprec_jax.ops`` turns ``QTensor``s into kernel
arguments. The counter-based stochastic-rounding hash lives here
(:mod:`pallas_kernels._hash`) so that the jnp quantizers and the kernels share
one implementation, and :mod:`pallas_kernels._rounding` rebuilds every
rounding step from operations all backends lower exactly.

Operands are canonical and K-major: ``a`` (B, M, K), ``b`` (B, N, K), output
(B, M, N); scales are f32 3-D arrays shaped like ``QTensor.scale``. Each
kernel has a plain-jnp ``*_reference`` twin with the same arguments.
"""

from pallas_kernels.fp8_matmul import Fp8MatmulConfig as Fp8MatmulConfig
from pallas_kernels.fp8_matmul import fp8_matmul as fp8_matmul
from pallas_kernels.fp8_matmul import (
  fp8_matmul_reference as fp8_matmul_reference,
)
from pallas_kernels.int8_matmul import Int8MatmulConfig as Int8MatmulConfig
from pallas_kernels.int8_matmul import int8_block_matmul as int8_block_matmul
from pallas_kernels.int8_matmul import (
  int8_block_matmul_reference as int8_block_matmul_reference,
)
from pallas_kernels.int8_matmul import jetfire_dgrad as jetfire_dgrad
from pallas_kernels.int8_matmul import jetfire_forward as jetfire_forward
from pallas_kernels.int8_matmul import jetfire_wgrad as jetfire_wgrad
from pallas_kernels.quantize import QuantizeConfig as QuantizeConfig
from pallas_kernels.quantize import dequantize as dequantize
from pallas_kernels.quantize import (
  dequantize_reference as dequantize_reference,
)
from pallas_kernels.quantize import quantize_fp8 as quantize_fp8
from pallas_kernels.quantize import (
  quantize_fp8_reference as quantize_fp8_reference,
)
from pallas_kernels.quantize import quantize_int8_block as quantize_int8_block
from pallas_kernels.quantize import (
  quantize_int8_block_reference as quantize_int8_block_reference,
)

__all__ = (
  "Fp8MatmulConfig",
  "Int8MatmulConfig",
  "QuantizeConfig",
  "dequantize",
  "dequantize_reference",
  "fp8_matmul",
  "fp8_matmul_reference",
  "int8_block_matmul",
  "int8_block_matmul_reference",
  "jetfire_dgrad",
  "jetfire_forward",
  "jetfire_wgrad",
  "quantize_fp8",
  "quantize_fp8_reference",
  "quantize_int8_block",
  "quantize_int8_block_reference",
)
