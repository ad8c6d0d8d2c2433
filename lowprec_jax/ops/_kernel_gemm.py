"""Kernel-backed implementations: ``"pallas"`` and ``"mosaic"``, one class.

:class:`KernelGemm` runs quantize, dequantize and the GEMMs with one family
of kernel modules that share their contracts (codes and scales shaped like
``QTensor``'s, K-major operands):

* ``"pallas"``: :mod:`pallas_kernels.quantize`, ``int8_matmul`` and
  ``fp8_matmul`` (portable ``pallas_call``; Triton on a GPU, the Pallas
  interpreter on a CPU);
* ``"mosaic"``: :mod:`pallas_kernels.mosaic.quantize`, ``int8_matmul`` and
  ``fp8_matmul`` (Hopper: ``plgpu.kernel``, TMA pipeline, 8-bit
  ``wgmma``; the Mosaic GPU interpreter on a CPU, where it must run under
  ``jax.jit``: eager autodiff dispatches XLA work while the interpreter's
  callbacks run their own, which can deadlock a 2-core host).

Where one quantization serves a GEMM in two layouts (g for both backward
GEMMs, a residual saved in the backward's layout, a weight stored (K, N)),
one kernel writes both layouts for INT8 blocks and for FP8 per-tensor
scales and square blocks; other tiles quantize once and transpose the codes
in XLA (the same bits, one more pass over the codes). A GEMM without a kernel is
refused at resolution (:meth:`gemm_unsupported_reason`). A quantize or
dequantize step whose tile has no kernel here (e.g. the Mosaic dequantize
of a 1 x G tile) runs the jnp reference of ``lowprec_jax.formats`` instead,
which gives the same bits, and the census names it per operand
(:meth:`quantizer_for`). ``fp8_block``'s weight gradient requantizes the
saved 1 x 128 x as 128 x 1 groups: one Mosaic kernel dequantizes in
registers (:meth:`requantize`); the portable kernels dequantize, then
quantize. Codes, scales
and INT8 GEMMs are bit-identical to ``"xla"`` (every implementation takes
the correctly rounded ``1 / scale`` of :mod:`pallas_kernels.numerics`);
FP8 GEMMs differ only in the f32 summation order (and, on Hopper, the FP8
accumulator's precision).
"""

import dataclasses
import types

import numpy as np
from jax import Array

from lowprec_jax.formats._format import QuantFormat
from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.ops._config import GemmQuant, OperandQuant
from lowprec_jax.ops._gemm_implementation import GemmImplementation
from lowprec_jax.ops._xla_gemm import XLA
from pallas_kernels import fp8_matmul, int8_matmul, quantize
from pallas_kernels.mosaic import fp8_matmul as mosaic_fp8_matmul
from pallas_kernels.mosaic import int8_matmul as mosaic_int8_matmul
from pallas_kernels.mosaic import quantize as mosaic_quantize


@dataclasses.dataclass(frozen=True)
class KernelGemm(GemmImplementation):
  """Quantize, GEMM and dequantize with one family of kernel modules.

  Args:
    name: the implementation's name.
    quantize_kernels: module with ``quantize_int8_block``, ``quantize_fp8``,
      ``dequantize``, ``unsupported_tile_reason``,
      ``unsupported_transpose_reason`` and ``unsupported_dequantize_reason``.
    int8_kernels: module with ``int8_block_matmul``.
    fp8_kernels: module with ``fp8_matmul`` and ``unsupported_reason``.
  """

  name: str
  quantize_kernels: types.ModuleType
  int8_kernels: types.ModuleType
  fp8_kernels: types.ModuleType

  def gemm_unsupported_reason(self, gemm: GemmQuant) -> str | None:
    lf, rf = gemm.lhs.format, gemm.rhs.format
    if lf.grid.is_int8:
      if lf.tile != rf.tile:
        return (
          "the INT8 kernel needs one block size for both operands, got "
          f"{lf.block} and {rf.block}"
        )
      return None
    return self.fp8_kernels.unsupported_reason(
      lf.tile, rf.tile, lf.storage_dtype, rf.storage_dtype
    )

  def _has_kernel(self, fmt: QuantFormat, reason) -> bool:
    if fmt.scale_dtype != np.dtype(np.float32):
      return False  # the kernels write f32 scales
    return fmt.grid.is_int8 or reason(fmt.tile) is None

  def quantizer_for(self, fmt: QuantFormat) -> str:
    has = self._has_kernel(fmt, self.quantize_kernels.unsupported_tile_reason)
    return self.name if has else XLA.name

  def dequantizer_for(self, fmt: QuantFormat) -> str:
    reason = self.quantize_kernels.unsupported_dequantize_reason
    return self.name if self._has_kernel(fmt, reason) else XLA.name

  def _quantize(self, x, fmt: QuantFormat, rounding: str, seed, **kw):
    if fmt.grid.is_int8:
      return self.quantize_kernels.quantize_int8_block(
        x, block=fmt.block, rounding=rounding, seed=seed, **kw
      )
    return self.quantize_kernels.quantize_fp8(
      x,
      dtype=fmt.storage_dtype,
      tile=fmt.tile,
      rounding=rounding,
      seed=seed,
      **kw,
    )

  def quantize(self, x: Array, want: OperandQuant, seed) -> QTensor:
    if self.quantizer_for(want.format) != self.name:
      return XLA.quantize(x, want, seed)
    q, s = self._quantize(x, want.format, want.rounding, seed)
    return QTensor(q, s, want.format, np.dtype(x.dtype))

  def quantize_with_transpose(self, x: Array, want: OperandQuant, seed):
    """(quantization of x, the same codes as x^T); one kernel where the
    tile has one (see the module docstring)."""
    fmt = want.format
    transposes = fmt.grid.is_int8 or (
      self.quantizer_for(fmt) == self.name
      and self.quantize_kernels.unsupported_transpose_reason(fmt.tile) is None
    )
    if not transposes:
      return super().quantize_with_transpose(x, want, seed)
    q, s, q_t, s_t = self._quantize(x, fmt, want.rounding, seed, transpose=True)
    dtype = np.dtype(x.dtype)
    return QTensor(q, s, fmt, dtype), QTensor(q_t, s_t, fmt, dtype)

  def quantize_pair(self, x, first: OperandQuant, second: OperandQuant, seeds):
    """One kernel reading x once where there is one (``fp8_block``'s g in
    1 x 128 and 128 x 1 groups in Mosaic GPU), else two quantizations."""
    a, b = first.format, second.format
    dual = getattr(self.quantize_kernels, "unsupported_dual_reason", None)
    fused = (
      dual is not None
      and not a.grid.is_int8
      and a.storage_dtype == b.storage_dtype
      and a.scale_dtype == b.scale_dtype == np.dtype(np.float32)
      and first.rounding == second.rounding
      and dual(a.tile, b.tile, first.rounding) is None
    )
    if not fused:
      return super().quantize_pair(x, first, second, seeds)
    (qa, sa), (qb, sb) = self.quantize_kernels.quantize_fp8_dual(
      x, dtype=a.storage_dtype, row_tile=a.tile, column_tile=b.tile
    )
    dtype = np.dtype(x.dtype)
    return QTensor(qa, sa, a, dtype), QTensor(qb, sb, b, dtype)

  def requantize(self, qt: QTensor, want: OperandQuant, seed):
    """One kernel where there is one (``fp8_block``'s 1 x 128 x to 128 x 1
    groups in Mosaic GPU), else dequantize then quantize."""
    fmt = want.format
    kernels = self.quantize_kernels
    f32 = np.dtype(np.float32)
    fused = (
      not fmt.grid.is_int8
      and not qt.format.grid.is_int8
      and qt.format.scale_dtype == fmt.scale_dtype == f32
      and kernels.unsupported_requantize_reason(qt.format.tile, fmt.tile)
      is None
    )
    if not fused:
      return super().requantize(qt, want, seed)
    q, s = kernels.requantize_fp8(
      qt.qvalue,
      qt.scale,
      in_tile=qt.format.tile,
      dtype=fmt.storage_dtype,
      tile=fmt.tile,
      rounding=want.rounding,
      seed=seed,
    )
    return QTensor(q, s, fmt, qt.dtype), f"{self.name}->{self.name}"

  def dequantize(self, qt: QTensor, dtype) -> Array:
    if self.dequantizer_for(qt.format) != self.name:
      return XLA.dequantize(qt, dtype)
    return self.quantize_kernels.dequantize(
      qt.qvalue, qt.scale, tile=qt.format.tile, out_dtype=dtype
    )

  def matmul(self, a: QTensor, b: QTensor, out_dtype) -> Array:
    codes = (a.qvalue, a.scale, b.qvalue, b.scale)
    out_dtype = np.dtype(out_dtype)
    if a.format.grid.is_int8:
      return self.int8_kernels.int8_block_matmul(
        *codes, block=a.format.block, out_dtype=out_dtype
      )
    return self.fp8_kernels.fp8_matmul(
      *codes, a_tile=a.format.tile, b_tile=b.format.tile, out_dtype=out_dtype
    )


PALLAS = KernelGemm("pallas", quantize, int8_matmul, fp8_matmul)
MOSAIC = KernelGemm(
  "mosaic", mosaic_quantize, mosaic_int8_matmul, mosaic_fp8_matmul
)
