"""Canonical layout for any ``dot_general``: (B, M, K) x (B, N, K) -> (B, M, N).

Every operand is transposed to ``batch + free + contracting`` and flattened to
three axes. Both operands end up K-major (the contraction is the last axis),
which is the layout 8-bit tensor-core instructions need, and quantization
tiles are defined on the last two axes, so a ``(1, 128)`` tile always groups
along the contraction. The output ``(B, M, N)`` reshapes straight to
``lax.dot_general``'s result layout ``batch + lhs_free + rhs_free``.

The backward GEMMs are canonical too:

    dlhs (B, M, K) = g (B, M, N) . rhs^T         lhs' = g,    rhs' = rhs.mT
    drhs (B, N, K) = g^T (B, N, M) . lhs^T       lhs' = g.mT, rhs' = lhs.mT

where ``.mT`` swaps the last two axes.

**The rhs in its stored layout.** A Linear's weight is stored (K, N):
``batch + contracting + free`` is its own order. Transposing it to (B, N, K)
would cost a full HBM pass of the 16-bit weight, and its gradient would come
back (B, N, K) and cost another. When the rhs is stored that way
(:attr:`Canonical.rhs_kn`), :meth:`Canonical.rhs` hands it over as
(B, K, N) without moving data; the op then quantizes it in that layout with
one kernel writing both (B, K, N) and (B, N, K) codes, and computes the
weight gradient as ``drhs (B, K, N) = lhs^T (B, K, M) . g^T`` straight
into the stored layout.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from jax import Array

from pallas_kernels.checks import describe


@dataclasses.dataclass(frozen=True)
class Canonical:
  """How one dot_general maps onto the canonical (B, M, K) x (B, N, K) GEMM."""

  lhs_perm: tuple[int, ...]
  rhs_perm: tuple[int, ...]
  batch_shape: tuple[int, ...]
  lhs_free_shape: tuple[int, ...]
  rhs_free_shape: tuple[int, ...]
  contract_shape: tuple[int, ...]

  @property
  def bmnk(self) -> tuple[int, int, int, int]:
    return (
      math.prod(self.batch_shape),
      math.prod(self.lhs_free_shape),
      math.prod(self.rhs_free_shape),
      math.prod(self.contract_shape),
    )

  @property
  def rhs_kn(self) -> bool:
    """True when the rhs is stored ``batch + contracting + free`` and not
    ``batch + free + contracting``: :meth:`rhs` then gives (B, K, N)."""
    identity = tuple(range(len(self.rhs_perm)))
    return self.rhs_perm != identity and self.rhs_kn_perm == identity

  @property
  def rhs_kn_perm(self) -> tuple[int, ...]:
    """The rhs axes in ``batch + contracting + free`` order."""
    nb, nc = len(self.batch_shape), len(self.contract_shape)
    perm = self.rhs_perm
    return perm[:nb] + perm[len(perm) - nc :] + perm[nb : len(perm) - nc]

  @property
  def out_shape(self) -> tuple[int, ...]:
    return self.batch_shape + self.lhs_free_shape + self.rhs_free_shape

  def lhs(self, lhs: Array) -> Array:
    b, m, _, k = self.bmnk
    return lhs.transpose(self.lhs_perm).reshape(b, m, k)

  def rhs(self, rhs: Array) -> Array:
    """(B, N, K), or (B, K, N) when :attr:`rhs_kn` (no data moved)."""
    b, _, n, k = self.bmnk
    if self.rhs_kn:
      return rhs.reshape(b, k, n)
    return rhs.transpose(self.rhs_perm).reshape(b, n, k)

  def out(self, out3: Array) -> Array:
    return out3.reshape(self.out_shape)


def _axes(value, what: str) -> tuple[int, ...]:
  if not isinstance(value, Sequence) or isinstance(value, str):
    raise ValueError(f"{what} must be a sequence of ints, got {value!r}")
  axes = tuple(value)
  for axis in axes:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
      raise ValueError(f"{what} must contain ints, got {value!r}")
  return tuple(int(a) for a in axes)


def _check_axes(name: str, x, axes: tuple[int, ...], what: str) -> None:
  for axis in axes:
    if not 0 <= axis < x.ndim:
      raise ValueError(
        f"{name} has {describe(x)}; {what} {axes} must be in [0, {x.ndim})"
      )
  if len(set(axes)) != len(axes):
    raise ValueError(f"{name} has {describe(x)}; {what} {axes} repeat an axis")


def canonicalize(lhs, rhs, dimension_numbers) -> Canonical:
  """Validates ``dimension_numbers`` for ``lhs``/``rhs``; returns the layout.

  Raises:
    ValueError: naming the operand, its shape and dtype, and what was
      expected, for malformed dimension numbers, out-of-range or repeated
      axes, or mismatched contracting or batch sizes.
  """
  try:
    (lc, rc), (lb, rb) = dimension_numbers
  except (TypeError, ValueError):
    raise ValueError(
      "dimension_numbers must be ((lhs_contracting, rhs_contracting), "
      f"(lhs_batch, rhs_batch)), got {dimension_numbers!r}"
    ) from None
  lc, rc = _axes(lc, "lhs contracting dims"), _axes(rc, "rhs contracting dims")
  lb, rb = _axes(lb, "lhs batch dims"), _axes(rb, "rhs batch dims")
  _check_axes("lhs", lhs, lc + lb, "contracting + batch dims")
  _check_axes("rhs", rhs, rc + rb, "contracting + batch dims")
  for kind, l_axes, r_axes in (("contracting", lc, rc), ("batch", lb, rb)):
    l_sizes = tuple(lhs.shape[a] for a in l_axes)
    r_sizes = tuple(rhs.shape[a] for a in r_axes)
    if len(l_axes) != len(r_axes) or l_sizes != r_sizes:
      raise ValueError(
        f"lhs has {describe(lhs)} and rhs has {describe(rhs)}; lhs {kind} "
        f"dims {l_axes} (sizes {l_sizes}) must pair with rhs {kind} dims "
        f"{r_axes} (sizes {r_sizes}) of the same sizes"
      )
  l_free = tuple(a for a in range(lhs.ndim) if a not in lc + lb)
  r_free = tuple(a for a in range(rhs.ndim) if a not in rc + rb)
  return Canonical(
    lhs_perm=lb + l_free + lc,
    rhs_perm=rb + r_free + rc,
    batch_shape=tuple(lhs.shape[a] for a in lb),
    lhs_free_shape=tuple(lhs.shape[a] for a in l_free),
    rhs_free_shape=tuple(rhs.shape[a] for a in r_free),
    contract_shape=tuple(lhs.shape[a] for a in lc),
  )
