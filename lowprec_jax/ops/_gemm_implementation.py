"""The interface every implementation of ``quantized_dot_general`` provides."""

import abc

import jax.numpy as jnp
from jax import Array

from lowprec_jax._implementations import Implementation
from lowprec_jax.formats._format import QuantFormat
from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.ops._config import DotQuantConfig, GemmQuant, OperandQuant


class GemmImplementation(Implementation):
  """Quantize, dequantize and block-scaled GEMMs on canonical tensors.

  ``seed`` arguments are uint32 scalars for stochastic rounding (None
  otherwise). Subclasses are frozen dataclasses (hashable: the plan of a
  ``custom_vjp`` carries them).
  """

  def unsupported_reason(self, request: DotQuantConfig) -> str | None:
    """Why some GEMM of the config cannot run here (None if all can)."""
    reasons = [
      f"{role} ({gemm.lhs.name} x {gemm.rhs.name}): {reason}"
      for role, gemm in request.gemms()
      if (reason := self.gemm_unsupported_reason(gemm))
    ]
    return "; ".join(reasons) or None

  @abc.abstractmethod
  def gemm_unsupported_reason(self, gemm: GemmQuant) -> str | None:
    """Why this implementation cannot multiply ``gemm``'s operands."""

  @abc.abstractmethod
  def quantizer_for(self, fmt: QuantFormat) -> str:
    """The implementation whose code quantizes to ``fmt`` here."""

  @abc.abstractmethod
  def dequantizer_for(self, fmt: QuantFormat) -> str:
    """The implementation whose code dequantizes ``fmt`` here."""

  @abc.abstractmethod
  def quantize(self, x: Array, want: OperandQuant, seed) -> QTensor:
    """``x`` quantized as ``want`` says (bit-identical across implementations)."""

  def quantize_pair(
    self, x: Array, first: OperandQuant, second: OperandQuant, seeds
  ) -> tuple[QTensor, QTensor]:
    """``x`` quantized as ``first`` and as ``second`` (seeds: one each)."""
    return self.quantize(x, first, seeds[0]), self.quantize(x, second, seeds[1])

  def quantize_with_transpose(
    self, x: Array, want: OperandQuant, seed
  ) -> tuple[QTensor, QTensor]:
    """The quantization of ``x`` and the same codes laid out as ``x.mT``."""
    qt = self.quantize(x, want, seed)
    return qt, qt.mT

  @abc.abstractmethod
  def dequantize(self, qt: QTensor, dtype) -> Array:
    """``qt`` dequantized to ``dtype``."""

  def requantize(
    self, qt: QTensor, want: OperandQuant, seed
  ) -> tuple[QTensor, str]:
    """``qt`` dequantized to float32 and quantized as ``want`` says, and
    the census's ``"<dequantizer>-><quantizer>"`` for it."""
    high = self.dequantize(qt, jnp.float32)
    done_by = f"{self.dequantizer_for(qt.format)}->"
    return self.quantize(high, want, seed), done_by + self.quantizer_for(
      want.format
    )

  @abc.abstractmethod
  def matmul(self, a: QTensor, b: QTensor, out_dtype) -> Array:
    """The (B, M, N) product of canonical operands in ``out_dtype``."""
