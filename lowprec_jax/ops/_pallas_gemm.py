"""The ``"pallas"`` implementation: portable Pallas kernels for every step.

Quantization runs the fused quantize kernels of :mod:`pallas_kernels.quantize`
(one kernel writes the INT8 codes of g and of g^T when one quantization
serves both backward GEMMs), the GEMMs run :mod:`pallas_kernels.int8_matmul`
and :mod:`pallas_kernels.fp8_matmul`, and dequantization runs the dequantize
kernel. On a GPU the kernels compile through the Pallas Triton backend; on a
CPU they run in the Pallas interpreter (for tests: ``implementation=None``
never picks this one there). Codes, scales and INT8 GEMM results are
bit-identical to the ``"xla"`` implementation; FP8 GEMMs differ from it only
in the f32 summation order.
"""

import numpy as np
from jax import Array

from lowprec_jax.formats._format import Int8Block, QuantFormat
from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.ops._config import GemmQuant, OperandQuant
from pallas_kernels import fp8_matmul, int8_matmul, quantize


def _quantize_call(x: Array, fmt: QuantFormat, rounding: str, seed, **kw):
  if isinstance(fmt, Int8Block):
    return quantize.quantize_int8_block(
      x, block=fmt.block, rounding=rounding, seed=seed, **kw
    )
  return quantize.quantize_fp8(
    x, dtype=fmt.storage_dtype, tile=fmt.tile, rounding=rounding, seed=seed
  )


class PallasGemm:
  """Quantize, GEMM and dequantize with the portable Pallas kernels."""

  name = "pallas"

  def unsupported_reason(self, gemm: GemmQuant) -> str | None:
    lf, rf = gemm.lhs.format, gemm.rhs.format
    if lf.family == "int8":
      if lf.block != rf.block:
        return (
          f"the INT8 kernel needs one block size for both operands, got "
          f"{lf.block} and {rf.block}"
        )
      return None
    return fp8_matmul.unsupported_reason(
      lf.tile, rf.tile, lf.storage_dtype, rf.storage_dtype
    )

  def quantize(self, x: Array, want: OperandQuant, seed) -> QTensor:
    q, s = _quantize_call(x, want.format, want.rounding, seed)
    return QTensor(q, s, want.format, np.dtype(x.dtype))

  def quantize_with_transpose(self, x: Array, want: OperandQuant, seed):
    """(quantization of x, the same codes as x^T); one kernel for INT8."""
    fmt = want.format
    if not isinstance(fmt, Int8Block):
      qt = self.quantize(x, want, seed)
      return qt, qt.mT
    q, s, q_t, s_t = _quantize_call(x, fmt, want.rounding, seed, transpose=True)
    dtype = np.dtype(x.dtype)
    return QTensor(q, s, fmt, dtype), QTensor(q_t, s_t, fmt, dtype)

  def dequantize(self, qt: QTensor, dtype) -> Array:
    return quantize.dequantize(
      qt.qvalue, qt.scale, tile=qt.format.tile, out_dtype=dtype
    )

  def __call__(self, a: QTensor, b: QTensor, out_dtype) -> Array:
    if isinstance(a.format, Int8Block):
      return int8_matmul.int8_block_matmul(
        a.qvalue,
        a.scale,
        b.qvalue,
        b.scale,
        block=a.format.block,
        out_dtype=out_dtype,
      )
    return fp8_matmul.fp8_matmul(
      a.qvalue,
      a.scale,
      b.qvalue,
      b.scale,
      a_tile=a.format.tile,
      b_tile=b.format.tile,
      out_dtype=out_dtype,
    )
