"""quantized_dot_general: ``lax.dot_general`` with quantized GEMMs and VJP.

The operands are put in the canonical layout (``_dimension_numbers``) outside
the ``custom_vjp``, so autodiff handles the transposes and the custom rule
only ever sees ``(B, M, K) x (B, N, K) -> (B, M, N)``:

* forward: quantize lhs and rhs (``config.fwd``), run the GEMM, save the
  quantized tensors and scales as residuals, named with ``checkpoint_name``
  (``RESIDUAL_NAMES``) so remat policies can keep or drop them;
* backward: quantize the cotangent g (``config.dlhs.lhs``, and
  ``config.drhs.lhs`` unless one quantization can serve both; g^T as g
  with the transposed tile, then its codes transposed), consume the
  residuals (reused, or requantized when a GEMM wants another tile), run
  ``dlhs = g . rhs^T`` and ``drhs = g^T . lhs^T``, and cast each cotangent
  to its primal's dtype.

No operand crosses HBM in a layout nobody reads. A residual the backward
reuses as is (its format transposes to the backward GEMM's) is saved in the
backward's layout, written by the same kernel that quantizes the forward
operand (``quantize_with_transpose``): no transpose of 8-bit codes later. A
rhs stored as (B, K, N) (a Linear's weight, ``Canonical.rhs_kn``) arrives in
that layout: it is quantized as (B, K, N) with the transposed tile (one
kernel writes the (B, N, K) forward codes too; stochastic rounding hashes
its (k, n) coordinates), and its gradient is computed as
``drhs (B, K, N) = lhs^T . g^T`` (the drhs GEMM with its operands swapped),
so neither the 16-bit weight nor its gradient is ever transposed.

Every GEMM runs as one jitted call (``lowprec_gemm``) inside a named scope
that records its role, implementation, formats, which implementation
quantized each operand, and its shape (``_census.GemmTag``);
:func:`lowprec_jax.ops.census` reads them back from the traced program.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.ad_checkpoint import checkpoint_name

from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.ops import _dispatch
from lowprec_jax.ops._census import GEMM_CALL, GemmTag
from lowprec_jax.ops._config import DotQuantConfig, GemmQuant, OperandQuant
from lowprec_jax.ops._dimension_numbers import canonicalize
from lowprec_jax.ops._gemm_implementation import GemmImplementation
from lowprec_jax.ops._recipes import get_recipe
from pallas_kernels.checks import as_seed, check_float_array, check_out_dtype
from pallas_kernels.numerics import derive_seed

RESIDUAL_NAMES = (
  "lowprec_lhs",
  "lowprec_lhs_scale",
  "lowprec_rhs",
  "lowprec_rhs_scale",
  "lowprec_seed",
)

# Salts that give each quantization of one call its own noise stream.
_SALT_FWD_LHS, _SALT_FWD_RHS = 1, 2
_SALT_G_DLHS, _SALT_G_DRHS = 3, 4
_SALT_REQUANT_DLHS, _SALT_REQUANT_DRHS = 5, 6

_NT_BATCHED = (((2,), (2,)), ((0,), (0,)))

Operand = QTensor | Array


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static facts of one call, passed to the custom_vjp as nondiff data."""

  config: DotQuantConfig
  implementation: GemmImplementation
  lhs_dtype: np.dtype
  rhs_dtype: np.dtype
  out_dtype: np.dtype
  precision: Any
  rhs_kn: bool = False  # rhs3 is (B, K, N) (Canonical.rhs_kn)

  @property
  def lhs_residual_transposed(self) -> bool:
    """True when the lhs residual is saved as (B, K, M) (drhs reuses it)."""
    return _reused_transposed(self.config.fwd.lhs, self.config.drhs.rhs)

  @property
  def rhs_residual_transposed(self) -> bool:
    """True when the rhs residual is saved as (B, K, N) (dlhs's layout)."""
    return self.rhs_kn or _reused_transposed(
      self.config.fwd.rhs, self.config.dlhs.rhs
    )

  @property
  def drhs_spec(self) -> GemmQuant:
    return _as_run(self.config, self.rhs_kn).drhs


def _as_run(config: DotQuantConfig, rhs_kn: bool) -> DotQuantConfig:
  """The GEMMs as they run: drhs is ``lhs^T . g^T`` when the rhs is
  (B, K, N) (its operand specs swapped)."""
  if not rhs_kn:
    return config
  spec = config.drhs
  return dataclasses.replace(config, drhs=GemmQuant(lhs=spec.rhs, rhs=spec.lhs))


def _reused_transposed(fwd: OperandQuant, bwd: OperandQuant) -> bool:
  """True when a backward GEMM reuses the forward codes, transposed."""
  return fwd.format is not None and bwd.format == fwd.format.transpose()


def _seeded(seed: Array, salt: int, want: OperandQuant):
  if want.rounding != "stochastic":
    return None
  return derive_seed(seed, salt)


def _prepare(
  x: Array, want: OperandQuant, seed: Array, salt: int, impl
) -> tuple[Operand, str]:
  """Quantizes a full-precision operand as ``want`` says (or passes it).

  Returns the operand and the implementation that quantized it ("none").
  """
  if want.format is None:
    return x, "none"
  with jax.named_scope("lowprec_quantize"):
    qt = impl.quantize(x, want, _seeded(seed, salt, want))
  return qt, impl.quantizer_for(want.format)


def _prepare_transposed(
  x: Array, want: OperandQuant, seed: Array, salt: int, impl
) -> tuple[Operand, str]:
  """``x.mT`` quantized as ``want`` says, without a pass over the 16-bit
  ``x.mT``: x is quantized with the transposed tile (SR hashes x's
  coordinates) and its 8-bit codes are transposed."""
  if want.format is None:
    return _transposed(x), "none"
  want = dataclasses.replace(want, format=want.format.transpose())
  operand, quantizer = _prepare(x, want, seed, salt, impl)
  return operand.mT, quantizer


def _consume(
  residual: Operand,
  transpose: bool,
  want: OperandQuant,
  seed: Array,
  salt: int,
  impl,
) -> tuple[Operand, str, str]:
  """Turns a residual into the operand a backward GEMM wants: the residual
  itself, or with ``transpose`` its transpose.

  A residual in another format is requantized in its own layout (with the
  transposed tile when ``transpose``; SR hashes its coordinates) and its
  8-bit codes are transposed. Returns the operand, a census note on its
  format ("" or "~requantized") and its quantizer (see ``GemmTag``).
  """
  if not isinstance(residual, QTensor):
    if transpose:
      operand, quantizer = _prepare_transposed(residual, want, seed, salt, impl)
    else:
      operand, quantizer = _prepare(residual, want, seed, salt, impl)
    return operand, "", quantizer
  view = residual.mT if transpose else residual
  if want.format is None:
    with jax.named_scope("lowprec_dequantize"):
      return impl.dequantize(view, view.dtype), "", "none"
  if view.format == want.format:
    return view, "", "residual"
  if transpose:
    want = dataclasses.replace(want, format=want.format.transpose())
  with jax.named_scope("lowprec_requantize"):
    operand, quantizer = impl.requantize(
      residual, want, _seeded(seed, salt, want)
    )
  return (
    _transposed(operand) if transpose else operand,
    "~requantized",
    quantizer,
  )


def _transposed(x: Operand) -> Operand:
  return x.mT if isinstance(x, QTensor) else jnp.swapaxes(x, -1, -2)


def _shares_g(cfg: DotQuantConfig) -> bool:
  """True when one quantization of g serves dlhs (as g) and drhs (as g^T)."""
  dl, dr = cfg.dlhs.lhs, cfg.drhs.lhs
  return (
    dl.format is not None
    and dr.format == dl.format.transpose()
    and dr.rounding == dl.rounding
  )


@functools.partial(jax.jit, static_argnames=("impl", "out_dtype", "precision"))
def lowprec_gemm(a: Operand, b: Operand, *, impl, out_dtype, precision):
  """One canonical GEMM: quantized by ``impl``, or a plain dot (impl None)."""
  if impl is not None:
    return impl.matmul(a, b, out_dtype)
  out = lax.dot_general(
    a, b, _NT_BATCHED, precision=precision, preferred_element_type=jnp.float32
  )
  return out.astype(out_dtype)


assert lowprec_gemm.__name__ == GEMM_CALL


def _gemm(a, b, out_dtype, plan: _Plan, role: str, spec: GemmQuant, notes):
  """Runs one canonical GEMM as a census-readable call.

  ``notes``: per operand (lhs, rhs), its (format note, quantizer).
  """
  (lhs_note, lhs_quantizer), (rhs_note, rhs_quantizer) = notes
  quantized = isinstance(a, QTensor)
  bsz, m, k = a.shape
  tag = GemmTag(
    role=role,
    implementation=plan.implementation.name if quantized else "none",
    lhs_format=(spec.lhs.name if quantized else "none") + lhs_note,
    rhs_format=(spec.rhs.name if quantized else "none") + rhs_note,
    lhs_quantizer=lhs_quantizer,
    rhs_quantizer=rhs_quantizer,
    shape=f"{bsz}x{m}x{b.shape[1]}x{k}",
  )
  with jax.named_scope(str(tag)):
    return lowprec_gemm(
      a,
      b,
      impl=plan.implementation if quantized else None,
      out_dtype=np.dtype(out_dtype),
      precision=plan.precision,
    )


def _named(x: Operand, side: str) -> Operand:
  if isinstance(x, QTensor):
    return QTensor(
      checkpoint_name(x.qvalue, f"lowprec_{side}"),
      checkpoint_name(x.scale, f"lowprec_{side}_scale"),
      x.format,
      x.dtype,
    )
  return checkpoint_name(x, f"lowprec_{side}")


def _prepare_with_residual(
  x, want, transposed, given_transposed, seed, salt, impl
):
  """Quantizes a forward operand and makes its residual.

  ``x`` is the operand, or its transpose when ``given_transposed``;
  ``transposed``: save the residual transposed (see ``_Plan``). Returns
  (forward operand, residual, quantizer).
  """
  if want.format is None:
    operand = _transposed(x) if given_transposed else x
    residual = x if given_transposed == transposed else _transposed(x)
    return operand, residual, "none"
  if not transposed:
    operand, quantizer = _prepare(x, want, seed, salt, impl)
    return operand, operand, quantizer
  if given_transposed:
    want = dataclasses.replace(want, format=want.format.transpose())
  with jax.named_scope("lowprec_quantize"):
    q, q_t = impl.quantize_with_transpose(x, want, _seeded(seed, salt, want))
  quantizer = impl.quantizer_for(want.format)
  return (q_t, q, quantizer) if given_transposed else (q, q_t, quantizer)


def _forward(lhs3, rhs3, seed, plan: _Plan):
  """(out, lhs residual, rhs residual); residual layouts as ``_Plan`` says."""
  cfg = plan.config.fwd
  impl = plan.implementation
  a, a_res, lq = _prepare_with_residual(
    lhs3,
    cfg.lhs,
    plan.lhs_residual_transposed,
    False,
    seed,
    _SALT_FWD_LHS,
    impl,
  )
  b, b_res, rq = _prepare_with_residual(
    rhs3,
    cfg.rhs,
    plan.rhs_residual_transposed,
    plan.rhs_kn,
    seed,
    _SALT_FWD_RHS,
    impl,
  )
  out = _gemm(a, b, plan.out_dtype, plan, "fwd", cfg, (("", lq), ("", rq)))
  return out, a_res, b_res


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _qdot(lhs3, rhs3, seed, plan):
  return _forward(lhs3, rhs3, seed, plan)[0]


def _qdot_fwd(lhs3, rhs3, seed, plan):
  out, a, b = _forward(lhs3, rhs3, seed, plan)
  seed = checkpoint_name(seed, "lowprec_seed")
  return out, (_named(a, "lhs"), _named(b, "rhs"), seed)


def _qdot_bwd(plan, res, g):
  a, b, seed = res
  cfg = plan.config
  impl = plan.implementation
  if _shares_g(cfg):
    # One quantization of g (one kernel for INT8 blocks) serves both GEMMs.
    want = cfg.dlhs.lhs
    with jax.named_scope("lowprec_quantize"):
      g_dlhs, g_drhs = impl.quantize_with_transpose(
        g, want, _seeded(seed, _SALT_G_DLHS, want)
      )
    g_quantizer = g_t_quantizer = impl.quantizer_for(want.format)
  elif cfg.dlhs.lhs.format is not None and cfg.drhs.lhs.format is not None:
    # g for dlhs, and g^T for drhs as g with the transposed tile: one
    # quantization call for both (one kernel where there is one).
    first = cfg.dlhs.lhs
    second = dataclasses.replace(
      cfg.drhs.lhs, format=cfg.drhs.lhs.format.transpose()
    )
    seeds = (
      _seeded(seed, _SALT_G_DLHS, first),
      _seeded(seed, _SALT_G_DRHS, second),
    )
    with jax.named_scope("lowprec_quantize"):
      g_dlhs, g_t = impl.quantize_pair(g, first, second, seeds)
    g_drhs = g_t.mT
    g_quantizer = impl.quantizer_for(first.format)
    g_t_quantizer = impl.quantizer_for(second.format)
  else:
    g_dlhs, g_quantizer = _prepare(g, cfg.dlhs.lhs, seed, _SALT_G_DLHS, impl)
    g_drhs, g_t_quantizer = _prepare_transposed(
      g, cfg.drhs.lhs, seed, _SALT_G_DRHS, impl
    )
  # dlhs (B, M, K) = g (B, M, N) . rhs^T
  w, note, quantizer = _consume(
    b,
    not plan.rhs_residual_transposed,
    cfg.dlhs.rhs,
    seed,
    _SALT_REQUANT_DLHS,
    impl,
  )
  notes = (("", g_quantizer), (note, quantizer))
  dlhs = _gemm(g_dlhs, w, plan.lhs_dtype, plan, "dlhs", cfg.dlhs, notes)
  # drhs (B, N, K) = g^T (B, N, M) . lhs^T, or (B, K, N) = lhs^T . g^T
  x, note, quantizer = _consume(
    a,
    not plan.lhs_residual_transposed,
    cfg.drhs.rhs,
    seed,
    _SALT_REQUANT_DRHS,
    impl,
  )
  notes = (("", g_t_quantizer), (note, quantizer))
  operands = (g_drhs, x)
  if plan.rhs_kn:
    notes, operands = notes[::-1], operands[::-1]
  drhs = _gemm(*operands, plan.rhs_dtype, plan, "drhs", plan.drhs_spec, notes)
  return dlhs, drhs, None


_qdot.defvjp(_qdot_fwd, _qdot_bwd)


def _out_dtype(lhs, rhs, preferred_element_type) -> np.dtype:
  if preferred_element_type is None:
    # lax.dot_general's result dtype, whatever jax_numpy_dtype_promotion is.
    with jax.numpy_dtype_promotion("standard"):
      return np.dtype(jnp.result_type(lhs.dtype, rhs.dtype))
  return check_out_dtype(preferred_element_type, "preferred_element_type")


def _as_precision(precision):
  return tuple(precision) if isinstance(precision, list) else precision


def quantized_dot_general(
  lhs: Array,
  rhs: Array,
  dimension_numbers,
  precision=None,
  preferred_element_type=None,
  *,
  out_sharding=None,
  config: "DotQuantConfig | str",
  implementation: str | None = None,
  seed=None,
) -> Array:
  """``lax.dot_general`` whose three GEMMs run quantized per ``config``.

  The result equals ``lax.dot_general(lhs, rhs, dimension_numbers)`` up to
  quantization error: for INT8 blocks ``out = sum_j sa_j sb_j (qa_j . qb_j)``
  with exact int32 partial sums per K block and fp32 rescaling; for FP8 an
  fp8 dot with fp32 accumulation. Gradients are computed by two more
  quantized GEMMs (see :class:`DotQuantConfig`) and cast to the primals'
  dtypes.

  Args:
    lhs, rhs: float32, bfloat16 or float16 arrays.
    dimension_numbers: ``((lhs_contract, rhs_contract), (lhs_batch,
      rhs_batch))`` exactly as for ``lax.dot_general``.
    precision: used by GEMMs that the config leaves unquantized; a quantized
      GEMM's precision is its format.
    preferred_element_type: output dtype (float32, bfloat16, float16);
      default: the promoted input dtype. Accumulation is always fp32/int32.
    out_sharding: as for ``lax.dot_general``. Under a mesh with explicit
      axes the quantized GEMMs run with those axes in auto mode and the
      result gets the sharding ``lax.dot_general`` would give it; otherwise
      ``out_sharding`` is applied as a sharding constraint.
    config: a :class:`DotQuantConfig` or a recipe name ("jetfire_int8", ...).
    implementation: "xla" (jnp quantizers, XLA dots), "pallas" (the
      portable Pallas kernels for quantization and GEMMs; interpreted on a
      CPU), "mosaic" (the Hopper kernels; through the Mosaic GPU
      interpreter on a CPU, where it must run under ``jax.jit``) or None:
      the best available for the backend (on a GPU "mosaic", "pallas",
      "xla", the first that supports every GEMM of the config; on a CPU
      "xla"). An implementation that cannot run raises
      ``NotImplementedError`` with the reason.
    seed: required when the config rounds stochastically: an int, a uint32
      scalar or a PRNG key. The same seed gives bit-identical results.

  Returns:
    An array of shape ``batch + lhs_free + rhs_free``.

  Raises:
    ValueError: for bad operands, dimension numbers, dtypes, configs or a
      missing seed, naming the argument, its shape and dtype.
  """
  config = get_recipe(config)
  if not isinstance(config, DotQuantConfig):
    raise ValueError(
      f"config {config.name!r} is an INT4 recipe: it keeps per-layer state "
      "(the Hadamard block, LSQ steps), so use lowprec_jax.nn."
      "QuantDotGeneral / quantize_model, or lowprec_jax.ops.int4_dot_general"
    )
  layout = canonicalize(lhs, rhs, dimension_numbers)
  if not config.quantized:
    return lax.dot_general(
      lhs,
      rhs,
      dimension_numbers,
      precision=precision,
      preferred_element_type=preferred_element_type,
      out_sharding=out_sharding,
    )
  check_float_array("lhs", lhs)
  check_float_array("rhs", rhs)
  out_dtype = _out_dtype(lhs, rhs, preferred_element_type)
  if config.needs_seed and seed is None:
    raise ValueError(
      f"config {config.name!r} rounds stochastically; pass seed= (an int, a "
      "uint32 scalar or a jax.random key)"
    )
  seed = as_seed(seed) if seed is not None else jnp.zeros((), jnp.uint32)
  impl = _dispatch.resolve(implementation, _as_run(config, layout.rhs_kn))
  explicit = jax.sharding.get_abstract_mesh().explicit_axes
  if explicit:
    # The type lax.dot_general would give (traced aside: adds no equation;
    # unlike eval_shape, it keeps the sharding under an abstract mesh).
    expected = jax.make_jaxpr(
      lambda a, b: lax.dot_general(
        a,
        b,
        dimension_numbers,
        preferred_element_type=out_dtype,
        out_sharding=out_sharding,
      )
    )(lhs, rhs).out_avals[0]
    # Operands that carry no explicit axis (e.g. unsharded inputs under
    # cuda_lowering's mesh) need no auto region.
    explicit = expected.sharding.mesh.explicit_axes
  if explicit:
    # Sharding-in-types: quantize and multiply with the mesh axes in auto
    # mode and give the result exactly the sharding lax.dot_general would.
    # (The seed is an argument, not a closure: a captured array would keep
    # the explicit mesh inside the auto region.)
    run = jax.sharding.auto_axes(
      lambda a, b, s: _quantized(
        a, b, layout, s, config, impl, out_dtype, precision
      ),
      out_sharding=expected.sharding,
    )
    return run(lhs, rhs, seed)
  out = _quantized(lhs, rhs, layout, seed, config, impl, out_dtype, precision)
  if out_sharding is not None:
    out = lax.with_sharding_constraint(out, out_sharding)
  return out


def _quantized(lhs, rhs, layout, seed, config, impl, out_dtype, precision):
  if 0 in layout.bmnk:
    # Nothing to multiply: the exact result is zeros (no precision involved).
    return jnp.zeros(layout.out_shape, out_dtype)
  plan = _Plan(
    config=config,
    implementation=impl,
    lhs_dtype=np.dtype(lhs.dtype),
    rhs_dtype=np.dtype(rhs.dtype),
    out_dtype=out_dtype,
    precision=_as_precision(precision),
    rhs_kn=layout.rhs_kn,
  )
  return layout.out(_qdot(layout.lhs(lhs), layout.rhs(rhs), seed, plan))
