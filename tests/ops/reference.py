"""Fake-quant oracle for quantized_dot_general, built from public pieces.

It quantizes exactly the tensors the op quantizes (same formats, roundings
and seeds, same reuse of g), dequantizes them, and multiplies in float32 at
HIGHEST precision with ``einsum``: a different arithmetic path from the op's
blocked int32/fp8 dots, so it checks the GEMMs, the scale bookkeeping and the
transposes of the backward pass.
"""

import dataclasses

import jax.numpy as jnp
from jax import lax

from lowprec_jax.formats import derive_seed, fake_quantize
from lowprec_jax.ops import (
  DotQuantConfig,
  GemmQuant,
  OperandQuant,
  fp8_block,
  fp8_current,
  get_recipe,
  jetfire_int8,
)
from lowprec_jax.ops._dimension_numbers import canonicalize

# The op's salts (white-box: the oracle must draw the same noise).
from lowprec_jax.ops._dot_general import (
  _SALT_FWD_LHS,
  _SALT_FWD_RHS,
  _SALT_G_DLHS,
  _SALT_G_DRHS,
  _SALT_REQUANT_DLHS,
  _SALT_REQUANT_DRHS,
)

HI = lax.Precision.HIGHEST

# The recipes every implementation (xla, pallas, mosaic) is compared on.
KERNEL_RECIPES = {
  "jetfire_int8": jetfire_int8(),
  "jetfire_int8_b128": jetfire_int8(128),
  "fp8_current": fp8_current(),
  "fp8_block": fp8_block(),
}


def _fq(x, spec, seed, salt):
  if spec.format is None:
    return x.astype(jnp.float32)
  s = derive_seed(seed, salt) if spec.rounding == "stochastic" else None
  return fake_quantize(
    x.astype(jnp.float32), spec.format, rounding=spec.rounding, seed=s
  )


def _fq_rhs(layout, rhs, spec, seed):
  """The forward rhs (B, N, K); a rhs stored (K, N) is quantized as it is
  stored, with the transposed tile (and SR hashed at its coordinates)."""
  if not layout.rhs_kn:
    return _fq(layout.rhs(rhs), spec, seed, _SALT_FWD_RHS)
  spec = _transposed_spec(spec)
  return jnp.swapaxes(_fq(layout.rhs(rhs), spec, seed, _SALT_FWD_RHS), 1, 2)


def _mm(a, b):
  """(B, M, K) x (B, N, K) -> (B, M, N) in f32 at HIGHEST precision."""
  return jnp.einsum("bmk,bnk->bmn", a, b, precision=HI)


def _transposed_spec(spec):
  if spec.format is None:
    return spec
  return dataclasses.replace(spec, format=spec.format.transpose())


def _residual(saved, saved_spec, transpose, want, seed, salt):
  """The operand a backward GEMM sees for a residual: the forward's
  quantized value ``saved`` (in the layout the op saves it, quantized as
  ``saved_spec``), transposed when ``transpose``. Another format is
  requantized from the dequantized residual in its saved layout, with the
  transposed tile when ``transpose`` (SR at the saved layout's
  coordinates)."""
  view = jnp.swapaxes(saved, 1, 2) if transpose else saved
  view_spec = _transposed_spec(saved_spec) if transpose else saved_spec
  if want.format is None or view_spec.format == want.format:
    return view
  spec = _transposed_spec(want) if transpose else want
  q = _fq(saved, spec, seed, salt)
  return jnp.swapaxes(q, 1, 2) if transpose else q


def gemm(lhs_format, rhs_format) -> GemmQuant:
  """A GEMM quantizing its operands to these formats."""
  lhs, rhs = OperandQuant(format=lhs_format), OperandQuant(format=rhs_format)
  return GemmQuant(lhs=lhs, rhs=rhs)


def fwd_only(name, lhs_format, rhs_format) -> DotQuantConfig:
  """A config quantizing only the forward GEMM, to these formats."""
  return DotQuantConfig(name=name, fwd=gemm(lhs_format, rhs_format))


def reference(lhs, rhs, dims, g, *, config, seed):
  """Returns (out, dlhs, drhs) in float32, in the op's output layouts."""
  cfg = get_recipe(config)
  seed = jnp.asarray(seed, jnp.uint32)
  layout = canonicalize(lhs, rhs, dims)
  a = _fq(layout.lhs(lhs), cfg.fwd.lhs, seed, _SALT_FWD_LHS)
  b = _fq_rhs(layout, rhs, cfg.fwd.rhs, seed)
  out = _mm(a, b)
  g3 = g.reshape(out.shape)
  ga = _fq(g3, cfg.dlhs.lhs, seed, _SALT_G_DLHS)
  # The op saves a (K, N)-stored rhs as stored, others as quantized.
  kn = layout.rhs_kn
  bt = _residual(
    jnp.swapaxes(b, 1, 2) if kn else b,
    _transposed_spec(cfg.fwd.rhs) if kn else cfg.fwd.rhs,
    not kn,
    cfg.dlhs.rhs,
    seed,
    _SALT_REQUANT_DLHS,
  )
  dlhs = _mm(ga, bt)
  same_g = (
    cfg.dlhs.lhs.format is not None
    and cfg.drhs.lhs.format == cfg.dlhs.lhs.format.transpose()
    and cfg.drhs.lhs.rounding == cfg.dlhs.lhs.rounding
  )
  if same_g:
    gt = jnp.swapaxes(ga, 1, 2)
  else:
    # g^T's quantization: g with the transposed tile (SR at g's coordinates).
    spec = _transposed_spec(cfg.drhs.lhs)
    gt = jnp.swapaxes(_fq(g3, spec, seed, _SALT_G_DRHS), 1, 2)
  at = _residual(a, cfg.fwd.lhs, True, cfg.drhs.rhs, seed, _SALT_REQUANT_DRHS)
  drhs = _mm(gt, at)
  dlhs = _from_canonical(dlhs, lhs.shape, layout.lhs_perm)
  drhs = _from_canonical(drhs, rhs.shape, layout.rhs_perm)
  return out.reshape(layout.out_shape), dlhs, drhs


def _from_canonical(x3, shape, perm):
  permuted = tuple(shape[p] for p in perm)
  inverse = [perm.index(i) for i in range(len(perm))]
  return x3.reshape(permuted).transpose(inverse)


def abs_dot(lhs, rhs, dims, g):
  """The same three products on |values|: the scale of fp32 rounding error."""
  layout = canonicalize(lhs, rhs, dims)
  a = jnp.abs(layout.lhs(lhs).astype(jnp.float32))
  b = jnp.abs(_fq_rhs(layout, rhs, OperandQuant(), 0))
  out = _mm(a, b)
  g3 = jnp.abs(g.reshape(out.shape).astype(jnp.float32))
  dlhs = _mm(g3, jnp.swapaxes(b, 1, 2))
  drhs = _mm(jnp.swapaxes(g3, 1, 2), jnp.swapaxes(a, 1, 2))
  return (
    out.reshape(layout.out_shape),
    _from_canonical(dlhs, lhs.shape, layout.lhs_perm),
    _from_canonical(drhs, rhs.shape, layout.rhs_perm),
  )
