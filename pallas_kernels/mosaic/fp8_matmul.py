"""Scaled FP8 GEMM on Hopper (Mosaic GPU): the ``"mosaic"`` twin.

Same contract as :func:`pallas_kernels.fp8_matmul.fp8_matmul`: codes
``a_q`` (B, M, K) and ``b_q`` (B, N, K) in E4M3 or E5M2, scales
shaped like ``QTensor.scale`` for their tiles. With ``c`` the finer
contraction tile of the two operands (None when both scales span K):

    out[b, m, n] = sum_j P_j * (sa_j[b, m] * sb_j[b, n])
    P_j = sum_{k in chunk j of c} a_q[b, m, k] * b_q[b, n, k]   (fp32 wgmma)

Supported tile pairs (``a_tile x b_tile``):

* per-tensor x per-tensor (``None x None``) and per-row x per-row
  (``(1, None) x (1, None)``): one fp32 accumulator over all of K, the
  scales applied once in the epilogue (current scaling);
* ``(1, 128) x (128, 128)`` (DeepSeek-V3 forward and dgrad) and
  ``(1, 128) x (1, 128)`` (wgrad): each 128-wide K chunk is one ``wgmma``
  into a fresh fp32 accumulator, promoted into an fp32 carry with its row and
  column scales (which also bounds the error of Hopper's reduced-precision
  FP8 accumulation to one chunk).

Mixed E5M2/E4M3 pairs (either way round: the weight gradient of a stored
(K, N) weight runs ``x^T . g^T`` with g in E5M2 as b) are native mixed-type
``wgmma`` from jax 0.11.0 on: no upcast.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import checks as C
from pallas_kernels.mosaic._config import TuningConfig
from pallas_kernels.mosaic._gemm import scaled_matmul

A_DTYPES = (np.dtype(jnp.float8_e4m3fn), np.dtype(jnp.float8_e5m2))
B_DTYPES = A_DTYPES
TILE_PAIRS = (
  (None, None),
  ((1, None), (1, None)),
  ((1, 128), (128, 128)),
  ((1, 128), (1, 128)),
)


def unsupported_reason(a_tile, b_tile, a_dtype, b_dtype) -> str | None:
  """Why these tiles and dtypes cannot run here (None if they can)."""
  if (a_tile, b_tile) not in TILE_PAIRS:
    return (
      f"the Hopper FP8 kernel supports a_tile x b_tile in {TILE_PAIRS}, got "
      f"{a_tile} x {b_tile}"
    )
  if np.dtype(a_dtype) not in A_DTYPES or np.dtype(b_dtype) not in B_DTYPES:
    return (
      f"the Hopper FP8 kernel multiplies E4M3 or E5M2 codes, "
      f"got {np.dtype(a_dtype)} x {np.dtype(b_dtype)}"
    )
  return None


def check_fp8_operands(a_q, a_s, b_q, b_s, a_tile, b_tile) -> None:
  """Raises ValueError / NotImplementedError naming what is wrong."""
  C.check_operands(a_q, b_q, A_DTYPES, B_DTYPES)
  reason = unsupported_reason(a_tile, b_tile, a_q.dtype, b_q.dtype)
  if reason:
    raise NotImplementedError(reason)
  C.check_operand_scales(a_q, a_s, a_tile, b_q, b_s, b_tile)


@functools.partial(
  jax.jit,
  static_argnames=("a_tile", "b_tile", "out_dtype", "interpret", "config"),
)
def fp8_matmul(
  a_q: jax.Array,
  a_s: jax.Array,
  b_q: jax.Array,
  b_s: jax.Array,
  *,
  a_tile,
  b_tile,
  out_dtype=jnp.float32,
  interpret=None,
  config: TuningConfig | None = None,
) -> jax.Array:
  """Scaled FP8 GEMM (see the module docstring).

  Args:
    a_q, a_s, b_q, b_s: codes and scales (the contract above).
    a_tile, b_tile: the operands' scale tiles (``TILE_PAIRS``).
    out_dtype: float32, bfloat16 or float16.
    interpret: None (interpret without a GPU), a bool, or a
      ``plgpu.InterpretGPUParams``.
    config: tiles (default: ``default_config``).

  Returns:
    (B, M, N) in ``out_dtype``.
  """
  check_fp8_operands(a_q, a_s, b_q, b_s, a_tile, b_tile)
  out_dtype = C.check_out_dtype(out_dtype)
  return scaled_matmul(
    a_q,
    a_s,
    a_tile,
    b_q,
    b_s,
    b_tile,
    out_dtype=out_dtype,
    interpret=interpret,
    config=config,
    name="lpj_mosaic_fp8_matmul",
  )
