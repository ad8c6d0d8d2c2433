"""Choosing the GEMM implementation: explicit, never a silent fallback.

``implementation=None`` picks the first implementation in ``PREFERENCE`` that
is registered, runs on the current backend and supports every GEMM of the
config. A named implementation that cannot run raises with the reason.
"""

from typing import Protocol

import jax
from jax import Array

from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.ops._config import DotQuantConfig, GemmQuant
from lowprec_jax.ops._xla_gemm import XlaGemm


class GemmImplementation(Protocol):
  """A block-scaled GEMM on canonical QTensors (B, M, K) x (B, N, K)."""

  name: str

  def unsupported_reason(self, gemm: GemmQuant) -> str | None:
    """Why this implementation cannot run ``gemm`` here (None if it can)."""

  def __call__(self, a: QTensor, b: QTensor, out_dtype) -> Array:
    """Returns the (B, M, N) product in ``out_dtype``."""


# Best first. The Pallas kernels register "mosaic" and "pallas" here.
PREFERENCE = ("mosaic", "pallas", "xla")
_REGISTRY: dict[str, GemmImplementation] = {"xla": XlaGemm()}
_NOT_YET = {
  "pallas": "the portable Pallas kernels are not part of this release",
  "mosaic": "the Hopper (Mosaic GPU) kernels are not part of this release",
}


def register(impl: GemmImplementation) -> None:
  """Adds an implementation (used by the Pallas kernel modules)."""
  _REGISTRY[impl.name] = impl


def get(name: str) -> GemmImplementation:
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


def _reasons(impl: GemmImplementation, config: DotQuantConfig) -> list[str]:
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
    NotImplementedError: when the named (or every) implementation cannot run
      this config on this backend, with each reason.
  """
  if implementation is None:
    failures = []
    for name in available():
      reasons = _reasons(_REGISTRY[name], config)
      if not reasons:
        return _REGISTRY[name]
      failures.append(f"{name}: " + "; ".join(reasons))
    raise NotImplementedError(
      f"no implementation can run config {config.name!r} on backend "
      f"{jax.default_backend()!r}: " + " | ".join(failures)
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
