"""The ``"mosaic"`` implementation: Hopper (Mosaic GPU) kernels.

GEMMs run :mod:`pallas_kernels.mosaic` (``plgpu.kernel``, TMA pipeline,
8-bit ``wgmma``); quantization and dequantization run the Mosaic quantize
kernels of :mod:`pallas_kernels.mosaic.quantize` for every tile of the
recipes (INT8 and FP8 ``S x S`` blocks, FP8 per-tensor, per-row, ``1 x G``
and ``G x 1``), with the fused quantize+transpose kernel where one INT8
quantization of g serves both backward GEMMs. A format outside them (e.g.
non-f32 scales, or a group size without a kernel) runs the jnp quantizer of
``lowprec_jax.formats`` (bit-identical codes; :meth:`MosaicGemm.quantizer_for`
names which ran, and the benchmark labels its rows with it). Dequantization
has Mosaic kernels for per-tensor and ``S x S`` tiles; other tiles
dequantize in XLA.

Everything compiles on a GPU and runs through the Mosaic GPU interpreter on a
CPU (for tests; ``implementation=None`` never picks it there; run it under
``jax.jit`` there: eager autodiff dispatches XLA work while the interpreter's
callbacks run their own, which can deadlock a 2-core host). Codes, scales
and INT8 GEMMs are bit-identical to ``"xla"`` (both take a correctly
rounded ``1 / scale``, never the GPU's approximate division: see
``pallas_kernels/mosaic/_reciprocal.py``); FP8 GEMMs differ only in the f32
summation order (and, on Hopper, the FP8 accumulator's precision).
"""

import numpy as np
from jax import Array

from lowprec_jax.formats._format import Int8Block, QuantFormat
from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.ops._config import GemmQuant, OperandQuant
from lowprec_jax.ops._xla_gemm import XlaGemm
from pallas_kernels.mosaic import fp8_matmul, int8_matmul
from pallas_kernels.mosaic import quantize as mosaic_quantize


def _has_kernel(
  fmt: QuantFormat, reason=mosaic_quantize.unsupported_tile_reason
) -> bool:
  if fmt.scale_dtype != np.dtype(np.float32):
    return False  # the kernels write f32 scales
  return isinstance(fmt, Int8Block) or reason(fmt.tile) is None


def _has_dequantize_kernel(fmt: QuantFormat) -> bool:
  return _has_kernel(fmt, mosaic_quantize.unsupported_dequantize_reason)


class MosaicGemm(XlaGemm):
  """Mosaic GPU GEMMs and quantize/dequantize kernels."""

  name = "mosaic"
  quantizer = "mosaic"

  def quantizer_for(self, fmt: QuantFormat) -> str:
    """``"mosaic"``, or ``"xla"`` for tiles without a Mosaic kernel."""
    return "mosaic" if _has_kernel(fmt) else "xla"

  def unsupported_reason(self, gemm: GemmQuant) -> str | None:
    lf, rf = gemm.lhs.format, gemm.rhs.format
    if lf.family == "int8":
      if lf.block != rf.block:
        return (
          "the Hopper INT8 kernel needs one block size for both operands, got "
          f"{lf.block} and {rf.block}"
        )
      return None
    return fp8_matmul.unsupported_reason(
      lf.tile, rf.tile, lf.storage_dtype, rf.storage_dtype
    )

  def _kernel_quantize(self, x, fmt, rounding, seed, **kw):
    if isinstance(fmt, Int8Block):
      return mosaic_quantize.quantize_int8_block(
        x, block=fmt.block, rounding=rounding, seed=seed, **kw
      )
    return mosaic_quantize.quantize_fp8(
      x, dtype=fmt.storage_dtype, tile=fmt.tile, rounding=rounding, seed=seed
    )

  def quantize(self, x: Array, want: OperandQuant, seed) -> QTensor:
    fmt = want.format
    if not _has_kernel(fmt) or x.ndim != 3:
      return super().quantize(x, want, seed)
    q, s = self._kernel_quantize(x, fmt, want.rounding, seed)
    return QTensor(q, s, fmt, np.dtype(x.dtype))

  def quantize_with_transpose(self, x: Array, want: OperandQuant, seed):
    """(quantization of x, the same codes as x^T); one kernel for INT8."""
    fmt = want.format
    if not isinstance(fmt, Int8Block) or x.ndim != 3:
      qt = self.quantize(x, want, seed)
      return qt, qt.mT
    q, s, q_t, s_t = self._kernel_quantize(
      x, fmt, want.rounding, seed, transpose=True
    )
    dtype = np.dtype(x.dtype)
    return QTensor(q, s, fmt, dtype), QTensor(q_t, s_t, fmt, dtype)

  def dequantize(self, qt: QTensor, dtype) -> Array:
    if not _has_dequantize_kernel(qt.format) or qt.qvalue.ndim != 3:
      return super().dequantize(qt, dtype)
    return mosaic_quantize.dequantize(
      qt.qvalue, qt.scale, tile=qt.format.tile, out_dtype=dtype
    )

  def __call__(self, a: QTensor, b: QTensor, out_dtype) -> Array:
    codes = (a.qvalue, a.scale, b.qvalue, b.scale)
    kw = dict(out_dtype=np.dtype(out_dtype))
    if isinstance(a.format, Int8Block):
      return int8_matmul.int8_block_matmul(*codes, block=a.format.block, **kw)
    tiles = dict(a_tile=a.format.tile, b_tile=b.format.tile)
    return fp8_matmul.fp8_matmul(*codes, **tiles, **kw)
