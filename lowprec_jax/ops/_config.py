"""Configuration of a quantized matmul: one operand spec per GEMM operand.

A linear layer runs three GEMMs, and each may quantize differently (AQT/qwix
design). In the canonical layout (see ``_dimension_numbers``):

    fwd:   out  = lhs . rhs          (lhs = x, rhs = w for a Linear)
    dlhs:  dlhs = g . rhs^T          (lhs' = g,   rhs' = the rhs residual)
    drhs:  drhs = g^T . lhs^T        (lhs' = g^T, rhs' = the lhs residual)

Residuals saved for backward are the forward's quantized operands. A
backward GEMM whose spec for a residual equals that residual's format after
transposition reuses it as is (square blocks, per-tensor scales); otherwise
the residual is requantized from its dequantized values (the census says
so). The gradient ``g`` is quantized from its full-precision value; if dlhs
and drhs want the same transposable format and rounding, one quantization
serves both (Jetfire).
"""

import dataclasses

import numpy as np

from lowprec_jax.formats._format import QuantFormat, Rounding
from pallas_kernels import tiles
from pallas_kernels.checks import ROUNDINGS


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class OperandQuant:
  """How one GEMM operand is quantized (``format=None``: not quantized)."""

  format: QuantFormat | None = None
  rounding: Rounding = "nearest"

  def __post_init__(self):
    if self.format is not None and not isinstance(self.format, QuantFormat):
      raise ValueError(
        "OperandQuant.format must be a QuantFormat or None, got "
        f"{self.format!r}"
      )
    if self.rounding not in ROUNDINGS:
      raise ValueError(
        f"OperandQuant.rounding must be one of {ROUNDINGS}, got "
        f"{self.rounding!r}"
      )

  @property
  def name(self) -> str:
    if self.format is None:
      return "none"
    suffix = "_sr" if self.rounding == "stochastic" else ""
    return self.format.name + suffix


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GemmQuant:
  """Operand specs of one GEMM; both quantized (same family) or neither."""

  lhs: OperandQuant = OperandQuant()
  rhs: OperandQuant = OperandQuant()

  def __post_init__(self):
    lf, rf = self.lhs.format, self.rhs.format
    if (lf is None) != (rf is None):
      raise ValueError(
        "GemmQuant needs both operands quantized or neither, got lhs="
        f"{self.lhs.name} and rhs={self.rhs.name}; a half-quantized GEMM "
        "would run in high precision"
      )
    if lf is None:
      return
    if "int4" in (lf.family, rf.family):
      raise ValueError(
        f"GemmQuant got lhs={lf.name} and rhs={rf.name}: INT4 GEMMs are not "
        "available through DotQuantConfig yet (INT4 training needs the "
        "Hadamard quantizer and bit-split gradients, which this config "
        "cannot express)"
      )
    if lf.family != rf.family:
      raise ValueError(
        f"GemmQuant operands must both be int8 or both fp8, got lhs="
        f"{lf.name} and rhs={rf.name}"
      )
    for side, fmt in (("lhs", lf), ("rhs", rf)):
      if fmt.scale_dtype != np.dtype(np.float32):
        raise ValueError(
          f"GemmQuant.{side} format {fmt.name} stores {fmt.scale_dtype} "
          "scales; GEMM operands take float32 scales (compact scales are "
          "for activations saved for the backward pass)"
        )
      if tiles.contraction_tile(fmt.tile) == 1:
        raise ValueError(
          f"GemmQuant.{side} format {fmt.name} has one scale per "
          "contraction element; use a tile that spans K or groups of it"
        )
    ks = [tiles.contraction_tile(f.tile) for f in (lf, rf)]
    ks = [k for k in ks if k]
    if len(ks) == 2 and max(ks) % min(ks):
      raise ValueError(
        f"GemmQuant contraction tiles {ks} of {lf.name} x {rf.name} must "
        "divide one another"
      )

  @property
  def quantized(self) -> bool:
    return self.lhs.format is not None

  @property
  def stochastic(self) -> bool:
    return "stochastic" in (self.lhs.rounding, self.rhs.rounding) and (
      self.quantized
    )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DotQuantConfig:
  """Operand specs for the forward and the two backward GEMMs.

  Args:
    name: shown in the census and errors.
    fwd: ``out = lhs . rhs``.
    dlhs: ``dlhs = g . rhs^T``; ``dlhs.lhs`` is g, ``dlhs.rhs`` the rhs.
    drhs: ``drhs = g^T . lhs^T``; ``drhs.lhs`` is g^T, ``drhs.rhs`` the lhs.
  """

  name: str = "custom"
  fwd: GemmQuant = GemmQuant()
  dlhs: GemmQuant = GemmQuant()
  drhs: GemmQuant = GemmQuant()

  def __post_init__(self):
    for role in ("fwd", "dlhs", "drhs"):
      if not isinstance(getattr(self, role), GemmQuant):
        raise ValueError(
          f"DotQuantConfig.{role} must be a GemmQuant, got "
          f"{getattr(self, role)!r}"
        )

  @property
  def quantized(self) -> bool:
    """False when no GEMM is quantized (plain lax.dot_general)."""
    return any(g.quantized for g in (self.fwd, self.dlhs, self.drhs))

  @property
  def needs_seed(self) -> bool:
    """True when any quantization uses stochastic rounding."""
    return any(g.stochastic for g in (self.fwd, self.dlhs, self.drhs))

  def gemms(self) -> tuple[tuple[str, GemmQuant], ...]:
    """(role, spec) of the quantized GEMMs, in the order fwd, dlhs, drhs."""
    roles = (("fwd", self.fwd), ("dlhs", self.dlhs), ("drhs", self.drhs))
    return tuple((role, g) for role, g in roles if g.quantized)

  def describe(self) -> str:
    """One line per GEMM: 'fwd: int8_block32 x int8_block32'."""
    return "\n".join(
      f"{role}: {g.lhs.name} x {g.rhs.name}"
      for role, g in (
        ("fwd", self.fwd),
        ("dlhs", self.dlhs),
        ("drhs", self.drhs),
      )
    )
