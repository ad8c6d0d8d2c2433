"""Choosing the implementation: explicit, never a silent fallback.

An implementation quantizes, multiplies and dequantizes (the
:class:`Implementation` protocol). ``implementation=None`` picks the first
entry of ``AUTO[backend]`` that is registered and supports every GEMM of the
config: on a GPU the Hopper kernels, then the portable Pallas kernels, then
XLA; on a CPU always XLA (the Pallas kernels only run interpreted there,
which is for tests; ask for ``"pallas"`` by name). A named implementation
that cannot run the config raises with the reason; the census records which
one ran.

Registering another implementation is one entry in ``_REGISTRY``.
"""

from typing import Protocol

import jax
from jax import Array

from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.ops._config import DotQuantConfig, GemmQuant, OperandQuant
from lowprec_jax.ops._mosaic_gemm import MosaicGemm
from lowprec_jax.ops._pallas_gemm import PallasGemm
from lowprec_jax.ops._xla_gemm import XlaGemm


class Implementation(Protocol):
  """Quantize, dequantize and block-scaled GEMMs on canonical tensors.

  Operands are (B, M, K) x (B, N, K) -> (B, M, N); ``seed`` is a uint32
  scalar for stochastic rounding (None otherwise).
  """

  name: str

  def unsupported_reason(self, gemm: GemmQuant) -> str | None:
    """Why this implementation cannot run ``gemm`` (None if it can)."""

  def quantize(self, x: Array, want: OperandQuant, seed) -> QTensor:
    """``x`` quantized as ``want`` says (bit-identical across implementations)."""

  def quantize_with_transpose(
    self, x: Array, want: OperandQuant, seed
  ) -> tuple[QTensor, QTensor]:
    """The quantization of ``x`` and the same codes laid out as ``x.mT``."""

  def dequantize(self, qt: QTensor, dtype) -> Array:
    """``qt`` dequantized to ``dtype``."""

  def __call__(self, a: QTensor, b: QTensor, out_dtype) -> Array:
    """Returns the (B, M, N) product in ``out_dtype``."""


# Best first.
PREFERENCE = ("mosaic", "pallas", "xla")
# What implementation=None may pick on each backend (others: XLA only).
AUTO = {"gpu": ("mosaic", "pallas", "xla"), "cpu": ("xla",)}
_REGISTRY: dict[str, Implementation] = {
  "mosaic": MosaicGemm(),
  "pallas": PallasGemm(),
  "xla": XlaGemm(),
}
_NOT_YET: dict[str, str] = {}


def register(impl: Implementation) -> None:
  """Adds (or replaces) an implementation under ``impl.name``."""
  _REGISTRY[impl.name] = impl


def get(name: str) -> Implementation:
  """The registered implementation ``name`` (already chosen by resolve)."""
  return _REGISTRY[name]


def available() -> tuple[str, ...]:
  """Names of the registered implementations, best first."""
  return tuple(n for n in PREFERENCE if n in _REGISTRY)


def _gemms(config: DotQuantConfig):
  return [
    (role, g)
    for role, g in (
      ("fwd", config.fwd),
      ("dlhs", config.dlhs),
      ("drhs", config.drhs),
    )
    if g.quantized
  ]


def _reasons(impl: Implementation, config: DotQuantConfig) -> list[str]:
  reasons = []
  for role, gemm in _gemms(config):
    reason = impl.unsupported_reason(gemm)
    if reason:
      reasons.append(f"{role} ({gemm.lhs.name} x {gemm.rhs.name}): {reason}")
  return reasons


def resolve(implementation: str | None, config: DotQuantConfig):
  """Returns the implementation that will run every GEMM of ``config``.

  Raises:
    ValueError: for an unknown name.
    NotImplementedError: when the named (or every candidate) implementation
      cannot run this config on this backend, with each reason.
  """
  if implementation is None:
    backend = jax.default_backend()
    failures = []
    for name in AUTO.get(backend, ("xla",)):
      if name not in _REGISTRY:
        continue
      reasons = _reasons(_REGISTRY[name], config)
      if not reasons:
        return _REGISTRY[name]
      failures.append(f"{name}: " + "; ".join(reasons))
    raise NotImplementedError(
      f"no implementation can run config {config.name!r} on backend "
      f"{backend!r}: " + " | ".join(failures)
    )
  if implementation in _REGISTRY:
    impl = _REGISTRY[implementation]
    reasons = _reasons(impl, config)
    if reasons:
      raise NotImplementedError(
        f"implementation={implementation!r} cannot run config "
        f"{config.name!r}: " + "; ".join(reasons)
      )
    return impl
  if implementation in _NOT_YET:
    raise NotImplementedError(
      f"implementation={implementation!r} is not available: "
      f"{_NOT_YET[implementation]}; available: {available()}"
    )
  raise ValueError(
    f"implementation must be None or one of {PREFERENCE}, got "
    f"{implementation!r}"
  )
