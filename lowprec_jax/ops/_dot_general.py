"""quantized_dot_general: ``lax.dot_general`` with quantized GEMMs and VJP.

The operands are put in the canonical layout (``_dimension_numbers``) outside
the ``custom_vjp``, so autodiff handles the transposes and the custom rule
only ever sees ``(B, M, K) x (B, N, K) -> (B, M, N)``:

* forward: quantize lhs and rhs (``config.fwd``), run the GEMM, save the
  quantized tensors and scales as residuals, named with ``checkpoint_name``
  (``RESIDUAL_NAMES``) so remat policies can keep or drop them;
* backward: quantize the cotangent g (``config.dlhs.lhs``, and
  ``config.drhs.lhs`` unless one quantization can serve both), consume the
  residuals (reused, or requantized when a GEMM wants another tile), run
  ``dlhs = g . rhs^T`` and ``drhs = g^T . lhs^T``, and cast each cotangent
  to its primal's dtype.

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


def _consume(
  residual: Operand, want: OperandQuant, seed: Array, salt: int, impl
) -> tuple[Operand, str, str]:
  """Turns a (transposed) residual into the operand a backward GEMM wants.

  Returns the operand, a census note on its format ("" or "~requantized")
  and its quantizer (see ``GemmTag``).
  """
  if not isinstance(residual, QTensor):
    operand, quantizer = _prepare(residual, want, seed, salt, impl)
    return operand, "", quantizer
  if want.format is None:
    with jax.named_scope("lowprec_dequantize"):
      return impl.dequantize(residual, residual.dtype), "", "none"
  if residual.format == want.format:
    return residual, "", "residual"
  with jax.named_scope("lowprec_dequantize"):
    high = impl.dequantize(residual, jnp.float32)
  operand, quantizer = _prepare(high, want, seed, salt, impl)
  dequantizer = impl.dequantizer_for(residual.format)
  return operand, "~requantized", f"{dequantizer}->{quantizer}"


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

  ``notes``: (rhs format note, lhs quantizer, rhs quantizer).
  """
  note, lhs_quantizer, rhs_quantizer = notes
  quantized = isinstance(a, QTensor)
  bsz, m, k = a.shape
  tag = GemmTag(
    role=role,
    implementation=plan.implementation.name if quantized else "none",
    lhs_format=spec.lhs.name if quantized else "none",
    rhs_format=(spec.rhs.name if quantized else "none") + note,
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


def _forward(lhs3, rhs3, seed, plan: _Plan):
  cfg = plan.config.fwd
  impl = plan.implementation
  a, lq = _prepare(lhs3, cfg.lhs, seed, _SALT_FWD_LHS, impl)
  b, rq = _prepare(rhs3, cfg.rhs, seed, _SALT_FWD_RHS, impl)
  return _gemm(a, b, plan.out_dtype, plan, "fwd", cfg, ("", lq, rq)), a, b


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
  else:
    g_dlhs, g_quantizer = _prepare(g, cfg.dlhs.lhs, seed, _SALT_G_DLHS, impl)
    g_t = jnp.swapaxes(g, -1, -2)
    g_drhs, g_t_quantizer = _prepare(
      g_t, cfg.drhs.lhs, seed, _SALT_G_DRHS, impl
    )
  # dlhs (B, M, K) = g (B, M, N) . rhs^T
  w, note, quantizer = _consume(
    _transposed(b), cfg.dlhs.rhs, seed, _SALT_REQUANT_DLHS, impl
  )
  notes = (note, g_quantizer, quantizer)
  dlhs = _gemm(g_dlhs, w, plan.lhs_dtype, plan, "dlhs", cfg.dlhs, notes)
  # drhs (B, N, K) = g^T (B, N, M) . lhs^T
  x, note, quantizer = _consume(
    _transposed(a), cfg.drhs.rhs, seed, _SALT_REQUANT_DRHS, impl
  )
  notes = (note, g_t_quantizer, quantizer)
  drhs = _gemm(g_drhs, x, plan.rhs_dtype, plan, "drhs", cfg.drhs, notes)
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
  impl = _dispatch.resolve(implementation, config)
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
  )
  return layout.out(_qdot(layout.lhs(lhs), layout.rhs(rhs), seed, plan))
