"""Scaled FP8 GEMM kernels of every implementation: see fp8_matmul_base.py.

The portable Pallas kernel runs in the Pallas interpreter on every tile pair
it serves, at one shape ragged in M, N and K; the Hopper kernel runs in the
(slower) Mosaic GPU interpreter on fewer cases, and compiled on realistic
shapes on the H200 (``ON_GPU``). Shapes are the ``ci`` and ``gpu`` ones of
``benchmarks/shapes.py``.
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
from tests.pallas_kernels.kernel_support import E4M3, E5M2, FP8_NAMES, ON_GPU


def _table(rows, bmnk=None) -> dict[str, Fp8Case]:
  """{'1x128-128x128-e4m3': Fp8Case} from (a_tile, b_tile, a_dtype[, bmnk])."""
  table = {}
  for row in rows:
    case = Fp8Case(*row) if bmnk is None else Fp8Case(*row, bmnk)
    key = f"{tiles.name(case.a_tile)}-{tiles.name(case.b_tile)}-"
    table[key + FP8_NAMES[jnp.dtype(case.a_dtype)]] = case
  return table


PALLAS_BMNK = shape("tiny_ragged_k300").bmnk  # ragged in M, N and K


class TestPallasFp8Matmul(Fp8MatmulTestBase):
  kernels = pallas_fp8_matmul
  interpret = True
  exact_cases = general_cases = _table(
    [
      (None, None, E4M3),
      (None, None, E5M2),
      ((1, None), (1, None), E4M3),
      ((1, None), (1, None), E5M2),
      ((1, 128), (128, 128), E4M3),
      ((1, 128), (128, 128), E5M2),
      ((1, 128), (1, 128), E4M3),
      ((1, 128), (1, 128), E5M2),
      ((1, 32), (32, 32), E4M3),
      ((1, 64), (1, 64), E5M2),
    ],
    PALLAS_BMNK,
  )
  fp8_budget = "float64"
  bf16_case = Fp8Case((1, 128), (128, 128), E4M3, PALLAS_BMNK)
  kernel_dot_dtypes = {"e4m3": (E4M3, E4M3), "e5m2": (E5M2, jnp.bfloat16)}
  unsupported_requests = {
    "row-x-tensor": ErrorCase(
      (1, None), None, r"a_tile=\(1, None\) x b_tile=None have no FP8 kernel"
    ),
    "1x128-x-64x64": ErrorCase(
      (1, 128), (64, 64), r"a_tile=\(1, 128\) x b_tile=\(64, 64\)"
    ),
    "1x16": ErrorCase((1, 16), (1, 16), r"with G in \(32, 64, 128\)"),
    "e4m3-x-e5m2": ErrorCase(
      None,
      None,
      "float8_e4m3fn x float8_e5m2 are not supported",
      b_dtype=E5M2,
    ),
  }


if ON_GPU:
  ALIGNED, RAGGED, EXACT = (
    shape(n).bmnk for n in ("gpu_aligned", "gpu_ragged", "gpu_exact")
  )
else:
  ALIGNED, RAGGED = shape("small_aligned").bmnk, shape("small_ragged").bmnk
  EXACT = ALIGNED
TENSOR, ROW = (None, None), ((1, None), (1, None))
BLOCK, GROUPS = ((1, 128), (128, 128)), ((1, 128), (1, 128))


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
    ]
  )
  general_cases = _table([(*TENSOR, E4M3, ALIGNED), (*BLOCK, E4M3, ALIGNED)])
  fp8_budget = "chunks"
  bf16_case = Fp8Case(*TENSOR, E4M3, EXACT)
  unsupported_requests = {
    "row-x-tensor": ErrorCase((1, None), None, r"got \(1, None\) x None"),
    "e4m3-x-e5m2": ErrorCase(
      None, None, "b_q has shape", ValueError, b_dtype=E5M2
    ),
  }
  race_shape = None if ON_GPU else ALIGNED
