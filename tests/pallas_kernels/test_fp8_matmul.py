"""Scaled FP8 GEMM kernels of every implementation: see fp8_matmul_base.py.

The Pallas kernel runs every tile pair it serves, at one shape ragged in M,
N and K; the Hopper kernel fewer cases (shapes: ``benchmarks/shapes.py``).
"""

import jax.numpy as jnp

from benchmarks.shapes import shape
from pallas_kernels import fp8_matmul as pallas_fp8_matmul
from pallas_kernels import tiles
from pallas_kernels.mosaic import fp8_matmul as mosaic_fp8_matmul
from tests.pallas_kernels.fp8_matmul_base import (
  ErrorCase,
  Fp8Case,
  Fp8MatmulTestBase,
)
from tests.pallas_kernels.kernel_support import (
  E4M3,
  E5M2,
  FP8_NAMES,
  MOSAIC_BMNK,
  ON_GPU,
)


def _table(rows) -> dict[str, Fp8Case]:
  """{'1x128-128x128-e4m3': Fp8Case} from (a_tile, b_tile, a_dtype, bmnk
  [, b_dtype]); the key names b's dtype when it is not E4M3, and the shape
  when the same GEMM comes again."""
  table = {}
  for case in (Fp8Case(*row) for row in rows):
    key = f"{tiles.name(case.a_tile)}-{tiles.name(case.b_tile)}-"
    key += FP8_NAMES[jnp.dtype(case.a_dtype)]
    if jnp.dtype(case.b_dtype) != jnp.dtype(E4M3):
      key += "-x-" + FP8_NAMES[jnp.dtype(case.b_dtype)]
    if key in table:  # the same GEMM on another shape
      key += "-" + "x".join(map(str, case.bmnk))
    table[key] = case
  return table


TENSOR, ROW = (None, None), ((1, None), (1, None))
BLOCK, GROUPS = ((1, 128), (128, 128)), ((1, 128), (1, 128))
PALLAS_BMNK = shape("tiny_ragged_k300").bmnk  # ragged in M, N and K
ALIGNED, RAGGED, EXACT = MOSAIC_BMNK


class TestPallasFp8Matmul(Fp8MatmulTestBase):
  kernels = pallas_fp8_matmul
  interpret = True
  exact_cases = general_cases = _table(
    [
      (*pair, dtype, PALLAS_BMNK)
      for pair in (TENSOR, ROW, BLOCK, GROUPS)
      for dtype in (E4M3, E5M2)
    ]
    + [((1, 32), (32, 32), E4M3, PALLAS_BMNK)]
    + [((1, 64), (1, 64), E5M2, PALLAS_BMNK)]
    + [(*TENSOR, E4M3, PALLAS_BMNK, E5M2)]  # x^T . g^T (fp8_current wgrad)
  )
  fp8_budget = "float64"
  bf16_case = Fp8Case(*BLOCK, E4M3, PALLAS_BMNK)
  kernel_dot_dtypes = {"e4m3": (E4M3, E4M3), "e5m2": (E5M2, jnp.bfloat16)}
  unsupported_requests = {
    "row-x-tensor": ErrorCase(
      (1, None), None, r"a_tile=\(1, None\) x b_tile=None have no FP8 kernel"
    ),
    "1x128-x-64x64": ErrorCase(
      (1, 128), (64, 64), r"a_tile=\(1, 128\) x b_tile=\(64, 64\)"
    ),
    "1x16": ErrorCase((1, 16), (1, 16), r"with G in \(32, 64, 128\)"),
    "e5m2-x-e5m2": ErrorCase(
      *TENSOR,
      "float8_e5m2 x float8_e5m2 are not supported",
      a_dtype=E5M2,
      b_dtype=E5M2,
    ),
  }


class TestMosaicFp8Matmul(Fp8MatmulTestBase):
  kernels = mosaic_fp8_matmul
  interpret = None  # the Mosaic GPU interpreter without a GPU
  exact_cases = _table(
    [
      (*TENSOR, E4M3, EXACT),
      (*TENSOR, E5M2, RAGGED),
      (*ROW, E4M3, RAGGED),
      (*BLOCK, E5M2, EXACT),
      (*BLOCK, E4M3, RAGGED),
      (*GROUPS, E4M3, RAGGED),
      (*TENSOR, E4M3, EXACT, E5M2),  # x^T . g^T (fp8_current wgrad)
      # K = 128: one pipeline step, two tiles per interpreted SM
      (*TENSOR, E4M3, shape("small_pairs").bmnk),
    ]
  )
  general_cases = _table([(*TENSOR, E4M3, ALIGNED), (*BLOCK, E4M3, ALIGNED)])
  fp8_budget = "chunks"
  bf16_case = Fp8Case(*TENSOR, E4M3, EXACT)
  unsupported_requests = {
    "row-x-tensor": ErrorCase((1, None), None, r"got \(1, None\) x None"),
    "e4m3-x-int8": ErrorCase(
      *TENSOR, "b_q has shape", ValueError, b_dtype=jnp.int8
    ),
  }
  race_shape = None if ON_GPU else ALIGNED
