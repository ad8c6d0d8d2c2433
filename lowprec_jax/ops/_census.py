"""The census: which GEMMs a traced function really runs, and in what dtypes.

It traces the function to a jaxpr and reads every GEMM in it, including
those nested in ``jit``, ``scan``, ``remat`` and custom-VJP bodies:

* each GEMM of :func:`~lowprec_jax.ops.quantized_dot_general` runs as one
  jitted call named ``lowprec_gemm`` inside a named scope written by
  :class:`GemmTag` (role, implementation, formats, which implementation
  quantized each operand, shape). The operand and accumulator dtypes are
  read off the first dot (``dot_general``, or a Mosaic ``wgmma``) inside the
  call, so the census reports what the program does, not what was asked;
* any other ``dot_general`` is listed as ``unquantized``.

Every row also carries the module path of the layer it came from: the
named scopes around it (Linen names its modules' scopes;
:func:`lowprec_jax.nn.quantize_model` scopes every NNX layer with its
path), with JAX's transformation wrappers (``jvp(...)``) and the library's
own scopes removed. A ``scan`` over layers counts its body ``length``
times; a GEMM recomputed by ``remat`` runs, and is counted, twice. Nothing
depends on a counter, so two traces of one function give the same census.
"""

import collections
import dataclasses
import re

import jax
from jax.extend import core as jax_core

GEMM_CALL = "lowprec_gemm"  # the name of the jitted call of one GEMM
_TAG = re.compile(r"lowprec\[([^\]]*)\]")
_TRANSFORM = re.compile(r"[A-Za-z_][\w]*\(|\)")


@dataclasses.dataclass(frozen=True)
class GemmTag:
  """What one quantized GEMM is, written into (and read back from) its scope.

  ``*_quantizer``: the implementation whose code produced the operand's
  codes (``"mosaic"``, or ``"xla"`` where a kernel-backed implementation
  has no kernel for the tile), ``"residual"`` for forward codes reused as
  they are, ``"none"`` for an unquantized operand, and
  ``"<dequantizer>-><quantizer>"`` for a residual requantized to another
  format.
  """

  role: str
  implementation: str
  lhs_format: str
  rhs_format: str
  lhs_quantizer: str
  rhs_quantizer: str
  shape: str  # "BxMxNxK"

  def __str__(self) -> str:
    fields = dataclasses.fields(GemmTag)
    return (
      "lowprec["
      + ";".join(f"{f.name}={getattr(self, f.name)}" for f in fields)
      + "]"
    )

  @classmethod
  def parse(cls, name_stack: str) -> "GemmTag | None":
    """The innermost tag in ``name_stack`` (None if there is none)."""
    found = _TAG.findall(name_stack)
    if not found:
      return None
    return cls(**dict(item.split("=", 1) for item in found[-1].split(";")))


def layer_path(name_stack: str) -> str:
  """The module path in a name stack: its scopes without transformation
  wrappers and without the library's own scopes (and what they enclose)."""
  parts = []
  for part in _TRANSFORM.sub("", name_stack).split("/"):
    if part.startswith("lowprec"):
      break
    if part:
      parts.append(part)
  return "/".join(parts)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmRecord(GemmTag):
  """One kind of GEMM at one module path, and how many times it runs: its
  tag (an unquantized dot's has role "unquantized" and shape "(lhs) x
  (rhs)"), the dtypes read off its dot, the layer path and the count."""

  lhs_dtype: str
  rhs_dtype: str
  accumulator: str
  path: str
  count: int

  def __str__(self) -> str:
    return repr(self)

  @property
  def quantized(self) -> bool:
    return self.role != "unquantized" and self.implementation != "none"

  @property
  def substituted(self) -> bool:
    """True when a quantize/dequantize step ran another implementation's
    code than the GEMM's (a kernel-backed implementation without a kernel
    for that tile)."""
    steps = f"{self.lhs_quantizer}->{self.rhs_quantizer}".split("->")
    known = {self.implementation, "residual", "none"}
    return self.quantized and any(s not in known for s in steps)

  @property
  def kind(self) -> tuple[str, ...]:
    """Everything but the quantizers, the shape, the path and the count."""
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
    """One line per kind of GEMM, shapes and paths merged:
    'fwd xla int8 x int8 ...'; kinds with a substituted quantize step say
    which implementation quantized their operands."""
    counts: dict[tuple, int] = collections.Counter()
    for r in self.records:
      quantizers = (
        (f" [quantized by {r.lhs_quantizer} x {r.rhs_quantizer}]",)
        if r.substituted
        else ("",)
      )
      counts[r.kind + quantizers] += r.count
    return "\n".join(
      f"{count:4d} x {role:<11} {impl:<5} {lf} x {rf}: {ld} x {rd} -> {acc}"
      + note
      for (role, impl, lf, rf, ld, rd, acc, note), count in counts.items()
    )

  def __str__(self) -> str:
    header = (
      "role", "impl", "lhs format", "rhs format", "lhs quantizer",
      "rhs quantizer", "lhs", "rhs", "acc", "B x M x N x K", "path", "count",
    )  # fmt: skip
    rows = [header] + [
      (
        *r.kind[:4],
        r.lhs_quantizer,
        r.rhs_quantizer,
        *r.kind[4:],
        r.shape,
        r.path or "-",
        str(r.count),
      )  # fmt: skip
      for r in self.records
    ]
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


def _dot_dtypes(eqn) -> tuple[str, str, str] | None:
  """(lhs, rhs, accumulator) dtypes of a dot equation, else None."""
  if eqn.primitive.name == "dot_general":
    lhs, rhs = (v.aval for v in eqn.invars)
    return str(lhs.dtype), str(rhs.dtype), str(eqn.outvars[0].aval.dtype)
  if eqn.primitive.name == "wgmma_ref":  # Mosaic GPU: acc, a, b
    acc, lhs, rhs = (v.aval for v in eqn.invars[:3])
    return str(lhs.dtype), str(rhs.dtype), str(acc.dtype)
  return None


def _first_dot(jaxpr) -> tuple[str, str, str] | None:
  """Dtypes of the first dot in ``jaxpr`` (depth first), or None."""
  for eqn in jaxpr.eqns:
    found = _dot_dtypes(eqn)
    subs = iter(_sub_jaxprs(eqn))
    while found is None and (sub := next(subs, None)) is not None:
      found = _first_dot(sub)
    if found:
      return found
  return None


def _is_gemm_call(eqn) -> bool:
  return eqn.primitive.name in ("jit", "pjit") and (
    eqn.params.get("name") == GEMM_CALL
  )


def _walk(jaxpr, context, multiplier, counts):
  # Name stacks inside nested jaxprs are relative to the enclosing equation,
  # so the enclosing stack is carried down as ``context``.
  for eqn in jaxpr.eqns:
    stack = f"{context}/{eqn.source_info.name_stack}"
    if _is_gemm_call(eqn):
      dtypes = _first_dot(eqn.params["jaxpr"].jaxpr)
      if dtypes is None:
        # A part of the call that partial evaluation split off (e.g. scale
        # indices hoisted out of a scan): the GEMM itself is elsewhere.
        continue
      counts[(GemmTag.parse(stack), dtypes, layer_path(stack))] += multiplier
      continue
    dtypes = _dot_dtypes(eqn)
    if dtypes and eqn.primitive.name == "dot_general":
      lhs, rhs = (v.aval for v in eqn.invars)
      tag = GemmTag("unquantized", *("none",) * 5, f"{lhs.shape} x {rhs.shape}")
      counts[(tag, dtypes, layer_path(stack))] += multiplier
    inner = multiplier
    if eqn.primitive.name == "scan":
      inner = multiplier * eqn.params["length"]
    for sub in _sub_jaxprs(eqn):
      _walk(sub, stack, inner, counts)


def census(fn, *args, **kwargs) -> Census:
  """Traces ``fn(*args, **kwargs)`` and lists the GEMMs it runs.

  Works on plain, jitted and differentiated functions (trace ``jax.grad`` of
  a loss to see the backward GEMMs).
  """
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  counts = collections.Counter()
  _walk(closed.jaxpr, "", 1, counts)
  records = [
    GemmRecord(
      **dataclasses.asdict(tag),
      lhs_dtype=dtypes[0],
      rhs_dtype=dtypes[1],
      accumulator=dtypes[2],
      path=path,
      count=count,
    )
    for (tag, dtypes, path), count in counts.items()
  ]
  order = {"fwd": 0, "dlhs": 1, "drhs": 2, "unquantized": 3}
  records.sort(key=lambda r: (order.get(r.role, 4), *r.kind, r.shape, r.path))
  return Census(tuple(records))
