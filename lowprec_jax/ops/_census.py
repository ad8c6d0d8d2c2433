"""The census: which GEMMs a traced function really runs, and in what dtypes.

It traces the function to a jaxpr and reads every ``dot_general`` in it,
including those nested in ``jit``, ``scan``, ``remat`` and custom-VJP
bodies. A dot inside a ``lowprec[...]`` named scope belongs to a quantized
matmul: the scope gives its role (fwd, dlhs, drhs), implementation and
formats, while the operand and accumulator dtypes are read off the dot
itself, so the census reports what the program does, not what was asked.
Any other dot is listed as ``unquantized``. A ``scan`` over layers counts
its body ``length`` times; the K-block scan inside a quantized GEMM does not
multiply it (one GEMM, many chunks).
"""

import collections
import dataclasses
import re

import jax
from jax.extend import core as jax_core

_TAG = re.compile(
  r"lowprec\[gemm=(?P<id>\d+);role=(?P<role>\w+);impl=(?P<impl>\w+);"
  r"lhs=(?P<lhs>[^;]+);rhs=(?P<rhs>[^;]+);bmnk=(?P<bmnk>[\dx]+)\]"
)


@dataclasses.dataclass(frozen=True)
class GemmRecord:
  """One kind of GEMM and how many times the program runs it."""

  role: str
  implementation: str
  lhs_format: str
  rhs_format: str
  lhs_dtype: str
  rhs_dtype: str
  accumulator: str
  shape: str
  count: int

  @property
  def quantized(self) -> bool:
    return self.role != "unquantized" and self.implementation != "none"

  @property
  def kind(self) -> tuple[str, ...]:
    """Everything but the shape and count."""
    return (
      self.role,
      self.implementation,
      self.lhs_format,
      self.rhs_format,
      self.lhs_dtype,
      self.rhs_dtype,
      self.accumulator,
    )


@dataclasses.dataclass(frozen=True)
class Census:
  """The GEMMs of one traced function, one record per distinct kind."""

  records: tuple[GemmRecord, ...]

  def total(self, *, quantized: bool | None = None, role=None) -> int:
    """Number of GEMMs, optionally only (un)quantized ones or one role."""
    return sum(
      r.count
      for r in self.records
      if (quantized is None or r.quantized == quantized)
      and (role is None or r.role == role)
    )

  def summary(self) -> str:
    """One line per kind of GEMM, shapes merged: 'fwd xla int8 x int8 ...'."""
    counts: dict[tuple, int] = collections.Counter()
    for r in self.records:
      counts[r.kind] += r.count
    return "\n".join(
      f"{count:4d} x {role:<11} {impl:<5} {lf} x {rf}: {ld} x {rd} -> {acc}"
      for (role, impl, lf, rf, ld, rd, acc), count in counts.items()
    )

  def __str__(self) -> str:
    header = (
      "role", "impl", "lhs format", "rhs format", "lhs", "rhs", "acc",
      "B x M x N x K", "count",
    )  # fmt: skip
    rows = [header] + [(*r.kind, r.shape, str(r.count)) for r in self.records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(item, jax_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax_core.Jaxpr):
        yield item


def _walk(jaxpr, context, multiplier, gemms, plain):
  # Name stacks inside nested jaxprs are relative to the enclosing equation,
  # so the enclosing stack is carried down as ``context``.
  for eqn in jaxpr.eqns:
    stack = f"{context}/{eqn.source_info.name_stack}"
    tag = _TAG.search(stack)
    if eqn.primitive.name == "wgmma_ref" and tag:  # Mosaic GPU: acc, a, b
      acc, lhs, rhs = (v.aval for v in eqn.invars[:3])
      dtypes = (str(lhs.dtype), str(rhs.dtype), str(acc.dtype))
      gemms.setdefault((int(tag["id"]), tag["role"]), (tag, dtypes, multiplier))
    if eqn.primitive.name == "dot_general":
      lhs, rhs = (v.aval for v in eqn.invars)
      dtypes = (str(lhs.dtype), str(rhs.dtype), str(eqn.outvars[0].aval.dtype))
      if tag:
        key = int(tag["id"]), tag["role"]
        gemms.setdefault(key, (tag, dtypes, multiplier))
      else:
        shape = f"{lhs.shape} x {rhs.shape}"
        plain[(dtypes, shape)] += multiplier
    inner = multiplier
    if eqn.primitive.name == "scan" and not tag:
      inner = multiplier * eqn.params["length"]
    for sub in _sub_jaxprs(eqn):
      _walk(sub, stack, inner, gemms, plain)


def census(fn, *args, **kwargs) -> Census:
  """Traces ``fn(*args, **kwargs)`` and lists the GEMMs it runs.

  Works on plain, jitted and differentiated functions (trace ``jax.grad`` of
  a loss to see the backward GEMMs).
  """
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  gemms, plain = {}, collections.Counter()
  _walk(closed.jaxpr, "", 1, gemms, plain)
  counts = collections.Counter()
  for tag, dtypes, multiplier in gemms.values():
    bmnk = tag["bmnk"]
    key = (tag["role"], tag["impl"], tag["lhs"], tag["rhs"], *dtypes, bmnk)
    counts[key] += multiplier
  for (dtypes, shape), count in plain.items():
    counts[("unquantized", "none", "none", "none", *dtypes, shape)] += count
  order = {"fwd": 0, "dlhs": 1, "drhs": 2, "unquantized": 3}
  records = tuple(
    GemmRecord(*key, count=count)
    for key, count in sorted(
      counts.items(), key=lambda kv: (order.get(kv[0][0], 4), kv[0])
    )
  )
  return Census(records)
