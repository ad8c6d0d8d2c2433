"""The INT4 training GEMM on Hopper (Mosaic GPU): the ``"mosaic"`` twin.

Same contract as :func:`pallas_kernels.int4_matmul.int4_matmul`: logical
operands ``a`` (B, M, K) and ``b`` (B, N, K) of INT4 codes (packed two per
byte) or int8 codes (the ``14 hi + lo`` of a bit split), with per-tensor or
S x S block scales, and

    out[b, m, n] = sum_k a[b, m, k] b[b, n, k]

rescaled exactly as :func:`pallas_kernels.matmul_reference.scaled_matmul`
does (block scales promote every S elements of K in f32; per-tensor scales
sum all of K in int32 and rescale once), so it agrees with the ``"xla"`` and
``"pallas"`` implementations bit for bit.

Packed operands travel as ``jnp.int4`` arrays (:func:`as_int4_array`: the
same bytes; compiled for an H200 the conversion is an HLO ``bitcast``, no
kernel), are streamed by TMA at half the bytes of int8 and unpacked to int8
in SMEM by each compute warpgroup before an s8 x s8 -> s32 ``wgmma``
(``_gemm``: the H200 has no INT4 tensor-core instruction, so INT4 buys
bytes, not FLOPs).

An operand stored **transposed** (``(B, K, R)``: what the backward GEMMs
read, the forward's saved codes) is transposed by XLA first, as ``int4`` or
int8 codes (one read and one write of the codes: half a byte per element
for INT4), because the 8-bit ``wgmma`` reads only K-major SMEM tiles and
Mosaic GPU on jax 0.11.2 cannot store an 8-bit register tile into a
transposed SMEM view (its layout inference finds no layout). The Pallas
kernel reads such operands where they lie instead.

Not here (``NotImplementedError``, see :func:`unsupported_reason`): 16 x 16
blocks (a K chunk shorter than the int8 ``wgmma``'s 32).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import int4_matmul as portable
from pallas_kernels import tiles
from pallas_kernels.int4 import as_int4_array
from pallas_kernels.int4_matmul import Int4Operand, check_int4_operands
from pallas_kernels.mosaic._config import TuningConfig
from pallas_kernels.mosaic._gemm import scaled_matmul

# S x S blocks with one int8 wgmma K chunk (a multiple of 32) per block.
INT4_GEMM_BLOCKS = tiles.BLOCK_SIZES


def unsupported_reason(a: Int4Operand, b: Int4Operand) -> str | None:
  """Why this kernel does not multiply operands stored as ``a`` and ``b``
  (None: it does)."""
  reason = portable.unsupported_reason(a, b)
  if reason:
    return reason
  for side, op in (("a", a), ("b", b)):
    if op.tile is not None and op.tile[0] not in INT4_GEMM_BLOCKS:
      return (
        f"{side}: the Hopper INT4 GEMM promotes one int8 wgmma K chunk per "
        f"block, so S x S blocks need S in {INT4_GEMM_BLOCKS}; got {op.tile}"
      )
  return None


@functools.partial(
  jax.jit, static_argnames=("a", "b", "out_dtype", "interpret", "config")
)
def int4_matmul(
  a_q: jax.Array,
  a_s: jax.Array,
  b_q: jax.Array,
  b_s: jax.Array,
  *,
  a: Int4Operand = Int4Operand(),
  b: Int4Operand = Int4Operand(),
  out_dtype=jnp.float32,
  interpret=None,
  config: TuningConfig | None = None,
) -> jax.Array:
  """``a . b^T`` (B, M, N) in ``out_dtype`` (the module docstring).

  Args:
    a_q, b_q: codes, uint8 (B, R, K/2) when packed, else int8 (B, R, K).
    a_s, b_s: scales over ``a.tile`` / ``b.tile``.
    a, b: how each operand is stored (:class:`Int4Operand`).
    out_dtype: float32, bfloat16 or float16.
    interpret: None (interpret without a GPU), a bool, or a
      ``plgpu.InterpretGPUParams``.
    config: tiles (default: ``default_config`` for the packed operands).

  Raises:
    ValueError: codes not uint8 (packed) or int8, scales of the wrong
      shape, logical shapes that do not contract.
    NotImplementedError: a storage or tile this kernel has no path for
      (:func:`unsupported_reason`).
  """
  check_int4_operands(a_q, a_s, a, b_q, b_s, b, out_dtype)
  reason = unsupported_reason(a, b)
  if reason:
    raise NotImplementedError(reason)
  a_codes, a_s = _k_major(a_q, a_s, a)
  b_codes, b_s = _k_major(b_q, b_s, b)
  kind = "x".join("int4" if op.packed else "int8" for op in (a, b))
  return scaled_matmul(
    a_codes,
    a_s,
    a.tile,
    b_codes,
    b_s,
    b.tile,
    out_dtype=jnp.dtype(out_dtype),
    interpret=interpret,
    config=config,
    name=f"lpj_mosaic_{kind}_matmul",
  )


def _k_major(codes, scale, op: Int4Operand):
  """(int4 or int8 codes (B, R, K), scales) of an operand stored as ``op``
  (a transposed one is transposed here, by XLA: see the module docstring)."""
  if op.transposed and op.packed:
    # Without the barrier XLA merges this bitcast with the forward GEMM's
    # and lays the shared int4 array out transposed, so that the forward
    # then transposes it back: two passes where one is needed.
    codes = lax.optimization_barrier(codes)
  if op.packed:
    codes = as_int4_array(codes)
  if op.transposed:
    codes, scale = jnp.swapaxes(codes, 1, 2), jnp.swapaxes(scale, 1, 2)
  return codes, scale
