"""The ``"xla"`` implementation: the jnp quantizers and real 8-bit dots.

Quantization is :func:`lowprec_jax.formats.quantize`; the GEMM is
:func:`pallas_kernels.matmul_reference.scaled_matmul` (int8 x int8 -> int32
or fp8 x fp8 -> f32 dots per contraction chunk, rescaled and accumulated in
fp32), the twin every GEMM kernel is tested against.
"""

import dataclasses

import numpy as np
from jax import Array

from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.formats._quantize import quantize
from lowprec_jax.ops._config import GemmQuant, OperandQuant
from lowprec_jax.ops._gemm_implementation import GemmImplementation
from pallas_kernels.matmul_reference import scaled_matmul


@dataclasses.dataclass(frozen=True)
class XlaGemm(GemmImplementation):
  """Block-scaled 8-bit GEMM with ``lax.dot_general`` on int8/fp8 operands.

  Quantizes and dequantizes with the jnp reference in ``lowprec_jax.formats``.
  """

  name: str = "xla"

  def gemm_unsupported_reason(self, gemm: GemmQuant) -> str | None:
    del gemm  # every valid GemmQuant is supported
    return None

  def quantizer_for(self, fmt) -> str:
    return self.name

  def dequantizer_for(self, fmt) -> str:
    return self.name

  def quantize(self, x: Array, want: OperandQuant, seed) -> QTensor:
    return quantize(x, want.format, rounding=want.rounding, seed=seed)

  def dequantize(self, qt: QTensor, dtype) -> Array:
    return qt.dequantize(dtype)

  def matmul(self, a: QTensor, b: QTensor, out_dtype) -> Array:
    return scaled_matmul(
      a.qvalue,
      a.scale,
      b.qvalue,
      b.scale,
      a_tile=a.format.tile,
      b_tile=b.format.tile,
      out_dtype=np.dtype(out_dtype),
    )


XLA = XlaGemm()
