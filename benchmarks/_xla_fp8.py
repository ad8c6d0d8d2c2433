"""XLA's own FP8 path: per-tensor scales fused into cuBLASLt by XLA.

XLA's GEMM rewriter turns ``dot(convert(a_fp8) * s_a, convert(b_fp8) * s_b)``
with SCALAR scales into one ``__cublas$lt$matmul$f8`` call (pallas.md §4).
This is the fairest XLA baseline for ``fp8_current``: the same recipe
(E4M3 forward, E5M2 gradient, current per-tensor scaling), written the way
XLA wants it, with a custom VJP so the backward GEMMs are FP8 too.
"""

import jax
import jax.numpy as jnp
from jax import lax

E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2


def _quantize(x, dtype):
  """Per-tensor current scaling: codes and the scalar fp32 scale."""
  fmax = float(jnp.finfo(dtype).max)
  amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
  scale = jnp.where(amax > 0, amax / fmax, 1.0)
  codes = jnp.clip(x.astype(jnp.float32) / scale, -fmax, fmax).astype(dtype)
  return codes, scale


def _dot(a, sa, b, sb, dims, out_dtype):
  """The pattern XLA fuses: dequantize by scalars, then dot."""
  a = a.astype(jnp.bfloat16) * sa.astype(jnp.bfloat16)
  b = b.astype(jnp.bfloat16) * sb.astype(jnp.bfloat16)
  return lax.dot_general(a, b, dims, preferred_element_type=out_dtype)


@jax.custom_vjp
def xla_fp8_matmul(x, w):
  """``x (M, K) . w (K, N)`` in FP8 with per-tensor scales, bf16 out."""
  return _forward(x, w)[0]


def _forward(x, w):
  xq, sx = _quantize(x, E4M3)
  wq, sw = _quantize(w, E4M3)
  out = _dot(xq, sx, wq, sw, (((1,), (0,)), ((), ())), jnp.bfloat16)
  return out, (xq, sx, wq, sw)


def _backward(res, g):
  xq, sx, wq, sw = res
  gq, sg = _quantize(g, E5M2)
  dx = _dot(gq, sg, wq, sw, (((1,), (1,)), ((), ())), jnp.bfloat16)
  dw = _dot(xq, sx, gq, sg, (((0,), (0,)), ((), ())), jnp.bfloat16)
  return dx, dw


xla_fp8_matmul.defvjp(_forward, _backward)
