"""Choosing an implementation: one mechanism for every op, never implicit.

An op (``quantized_dot_general``, ``scale_by_adam_quantized``) has several
:class:`Implementation` objects: frozen, hashable dataclasses that say why
they cannot serve a request (or ``None`` if they can) and then do the work.
An :class:`ImplementationRegistry` turns the user's ``implementation=``
argument into one of them, once, where the op is called:

* a name (``"xla"``) or an :class:`Implementation`: exactly that one; if it
  cannot serve the request, ``NotImplementedError`` with the reason;
* a sequence of names or implementations: tried in the order the user gave,
  the first that can serve the request wins; if none can,
  ``NotImplementedError`` listing every reason (tokamax's ``api.py``
  pattern). This is an explicit, user-requested order;
* ``None``: the registry's documented choice for the backend (``auto``),
  tried in that order the same way. Ops record which implementation ran
  (the census for GEMMs), so the choice is never silent.

An unknown name raises ``ValueError`` listing the registered ones.
"""

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from pallas_kernels.backend import target_backend


class Implementation(abc.ABC):
  """One way to run an op. Subclasses are frozen dataclasses with a name."""

  name: str

  @abc.abstractmethod
  def unsupported_reason(self, request: Any) -> str | None:
    """Why this implementation cannot serve ``request`` (None if it can)."""


ImplementationLike = str | Implementation | Sequence[str | Implementation]


@dataclasses.dataclass(frozen=True)
class ImplementationRegistry:
  """The implementations of one op, best first, and what ``None`` picks.

  Args:
    op: the op's name, for error messages.
    implementations: every implementation, best first.
    auto: backend name -> implementation names ``None`` may pick, in order;
      a backend not listed gets ``default_auto``.
    default_auto: the choice on any other backend.
  """

  op: str
  implementations: tuple[Implementation, ...]
  auto: Mapping[str, tuple[str, ...]]
  default_auto: tuple[str, ...] = ("xla",)

  @property
  def names(self) -> tuple[str, ...]:
    """Registered names, best first."""
    return tuple(impl.name for impl in self.implementations)

  def get(self, name: str) -> Implementation:
    """The implementation called ``name``; ValueError for an unknown one."""
    for impl in self.implementations:
      if impl.name == name:
        return impl
    raise ValueError(
      f"{self.op}: implementation must be None or one of {self.names} (or "
      f"an Implementation, or a sequence of them), got {name!r}"
    )

  def _candidates(self, implementation) -> list[Implementation]:
    if implementation is None:
      names = self.auto.get(target_backend(), self.default_auto)
      return [self.get(name) for name in names]
    if isinstance(implementation, (str, Implementation)):
      implementation = (implementation,)
    if not isinstance(implementation, Sequence) or not implementation:
      raise ValueError(
        f"{self.op}: implementation must be None or one of {self.names} (or "
        f"an Implementation, or a non-empty sequence of them), got "
        f"{implementation!r}"
      )
    return [
      item if isinstance(item, Implementation) else self.get(item)
      for item in implementation
    ]

  def resolve(self, implementation, request, what: str) -> Implementation:
    """The first candidate that can serve ``request`` (see the module doc).

    Args:
      implementation: None, a name, an Implementation or a sequence of them.
      request: what the implementation must serve (passed to
        ``unsupported_reason``).
      what: the request in words, for the error message.

    Raises:
      ValueError: for an unknown name or a malformed argument.
      NotImplementedError: when no candidate can serve ``request``, with
        every candidate's reason.
    """
    candidates = self._candidates(implementation)
    reasons = []
    for impl in candidates:
      reason = impl.unsupported_reason(request)
      if reason is None:
        return impl
      reasons.append((impl.name, reason))
    if implementation is not None and len(candidates) == 1:
      raise NotImplementedError(
        f"{self.op}: implementation={candidates[0].name!r} cannot run "
        f"{what}: {reasons[0][1]}"
      )
    if implementation is None:
      asked = f"no implementation on backend {target_backend()!r} can"
    else:
      asked = f"none of implementation={tuple(n for n, _ in reasons)} can"
    listed = " | ".join(f"{name}: {reason}" for name, reason in reasons)
    raise NotImplementedError(f"{self.op}: {asked} run {what}: {listed}")
