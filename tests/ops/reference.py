"""Fake-quant oracle for quantized_dot_general, built from public pieces.

It quantizes exactly the tensors the op quantizes (same formats, roundings
and seeds, same reuse of g), dequantizes them, and multiplies in float32 at
HIGHEST precision with ``einsum``: a different arithmetic path from the op's
blocked int32/fp8 dots, so it checks the GEMMs, the scale bookkeeping and the
transposes of the backward pass.
"""

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


def _mm(a, b):
  """(B, M, K) x (B, N, K) -> (B, M, N) in f32 at HIGHEST precision."""
  return jnp.einsum("bmk,bnk->bmn", a, b, precision=HI)


def _residual(fwd_value, fwd_spec, want, seed, salt):
  """The operand a backward GEMM sees for a residual (already transposed)."""
  if want.format is None or fwd_spec.format == want.format:
    return fwd_value
  # Requantization from the dequantized residual.
  return _fq(fwd_value, want, seed, salt)


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
  b = _fq(layout.rhs(rhs), cfg.fwd.rhs, seed, _SALT_FWD_RHS)
  out = _mm(a, b)
  g3 = g.reshape(out.shape)
  ga = _fq(g3, cfg.dlhs.lhs, seed, _SALT_G_DLHS)
  fmt_t = cfg.fwd.rhs.format.transpose() if cfg.fwd.rhs.format else None
  bt = _residual(
    jnp.swapaxes(b, 1, 2),
    type(cfg.fwd.rhs)(format=fmt_t),
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
    gt = _fq(jnp.swapaxes(g3, 1, 2), cfg.drhs.lhs, seed, _SALT_G_DRHS)
  fmt_t = cfg.fwd.lhs.format.transpose() if cfg.fwd.lhs.format else None
  at = _residual(
    jnp.swapaxes(a, 1, 2),
    type(cfg.fwd.lhs)(format=fmt_t),
    cfg.drhs.rhs,
    seed,
    _SALT_REQUANT_DRHS,
  )
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
  b = jnp.abs(layout.rhs(rhs).astype(jnp.float32))
  out = _mm(a, b)
  g3 = jnp.abs(g.reshape(out.shape).astype(jnp.float32))
  dlhs = _mm(g3, jnp.swapaxes(b, 1, 2))
  drhs = _mm(jnp.swapaxes(g3, 1, 2), jnp.swapaxes(a, 1, 2))
  return (
    out.reshape(layout.out_shape),
    _from_canonical(dlhs, lhs.shape, layout.lhs_perm),
    _from_canonical(drhs, rhs.shape, layout.rhs_perm),
  )
