"""The ``"mosaic"`` implementation: Hopper (Mosaic GPU) GEMM kernels.

The GEMMs run :mod:`pallas_kernels.mosaic` (``plgpu.kernel``, TMA pipeline,
8-bit ``wgmma``): compiled on a GPU, through the Mosaic GPU interpreter on a
CPU (for tests; ``implementation=None`` never picks it there; run it under
``jax.jit`` there: eager autodiff dispatches XLA work while the interpreter's
callbacks run their own, which can deadlock a 2-core host). INT8 GEMMs
are bit-identical to ``"xla"``; FP8 GEMMs differ only in the f32 summation
order (and, on Hopper, the FP8 accumulator's precision within a chunk).

Quantization and dequantization are not Mosaic kernels: they run the jnp
quantizers of ``lowprec_jax.formats`` (``QUANTIZER``), bit-identical to every
other implementation; the benchmark reports them under that name.
"""

import numpy as np
from jax import Array

from lowprec_jax.formats._format import Int8Block
from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.ops._config import GemmQuant
from lowprec_jax.ops._xla_gemm import XlaGemm
from pallas_kernels.mosaic import fp8_matmul, int8_matmul

QUANTIZER = "xla"


class MosaicGemm(XlaGemm):
  """Mosaic GPU GEMMs; quantize/dequantize inherited from ``"xla"``."""

  name = "mosaic"
  quantizer = QUANTIZER

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

  def __call__(self, a: QTensor, b: QTensor, out_dtype) -> Array:
    codes = (a.qvalue, a.scale, b.qvalue, b.scale)
    kw = dict(out_dtype=np.dtype(out_dtype))
    if isinstance(a.format, Int8Block):
      return int8_matmul.int8_block_matmul(*codes, block=a.format.block, **kw)
    tiles = dict(a_tile=a.format.tile, b_tile=b.format.tile)
    return fp8_matmul.fp8_matmul(*codes, **tiles, **kw)
