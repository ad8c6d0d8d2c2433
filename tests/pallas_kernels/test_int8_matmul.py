"""Block-scaled INT8 GEMM kernels of every implementation: see
int8_matmul_base.py.

The portable Pallas kernel runs in the Pallas interpreter on three shapes;
the Hopper kernel runs in the (slower) Mosaic GPU interpreter on fewer
cases, and compiled on realistic shapes on the H200 (``ON_GPU``). Shapes are
the ``ci`` and ``gpu`` ones of ``benchmarks/shapes.py``.
"""

from benchmarks.shapes import shape
from pallas_kernels import int8_matmul as pallas_int8_matmul
from pallas_kernels.mosaic import int8_matmul as mosaic_int8_matmul
from tests.pallas_kernels.int8_matmul_base import (
  Int8MatmulTestBase,
  Int8OutCase,
)
from tests.pallas_kernels.kernel_support import ON_GPU

NEAREST, SR = "nearest", "stochastic"


def _by_shape_and_block(names, blocks):
  return {
    f"{name}-{block}": (shape(name).bmnk, block)
    for name in names
    for block in blocks
  }


class TestPallasInt8Matmul(Int8MatmulTestBase):
  kernels = pallas_int8_matmul
  interpret = True
  exact_cases = general_cases = _by_shape_and_block(
    ("tiny_aligned", "tiny_ragged", "tiny_ragged_k"), (32, 128)
  )
  same_bits_as_xla = True
  bf16_case = (shape("tiny_ragged_k").bmnk, 128, False)
  int8_out_cases = {
    f"{block}-{rounding}": Int8OutCase(
      shape("tiny_ragged").bmnk,
      block,
      32,
      rounding,
      exact=False,
      seeds=(0, 77) if rounding == SR else (None,),
    )
    for block in (32, 128)
    for rounding in (NEAREST, SR)
  } | {
    "128-out128": Int8OutCase(
      shape("tiny_ragged_k").bmnk, 128, 128, NEAREST, exact=False
    )
  }
  nan_shape = shape("tiny_ragged").bmnk
  has_jetfire_helpers = True


_GPU = {"aligned": "gpu_aligned", "ragged": "gpu_ragged", "exact": "gpu_exact"}
_CPU = {"aligned": "small_aligned", "ragged": "small_ragged"}
_CPU["exact"] = _CPU["aligned"]
_MOSAIC = {k: shape(v).bmnk for k, v in (_GPU if ON_GPU else _CPU).items()}


class TestMosaicInt8Matmul(Int8MatmulTestBase):
  kernels = mosaic_int8_matmul
  interpret = None  # the Mosaic GPU interpreter without a GPU
  exact_cases = {
    "aligned-32": (_MOSAIC["aligned"], 32),
    "aligned-128": (_MOSAIC["aligned"], 128),
    "ragged-32": (_MOSAIC["ragged"], 32),
    "ragged-64": (_MOSAIC["ragged"], 64),
  }
  general_cases = {
    "ragged-32": (_MOSAIC["ragged"], 32),
    "ragged-128": (_MOSAIC["ragged"], 128),
  }
  same_bits_as_xla = not ON_GPU  # the interpreter; a GPU may fuse FMAs
  bf16_case = (_MOSAIC["aligned"], 128, True)
  int8_out_cases = {
    "32-nearest": Int8OutCase(_MOSAIC["exact"], 32, 32, NEAREST, True),
    "32-stochastic": Int8OutCase(
      _MOSAIC["ragged"], 32, 32, SR, True, (2**32 - 3,)
    ),
    "128-out64-stochastic": Int8OutCase(
      _MOSAIC["exact"], 128, 64, SR, True, (2**32 - 3,)
    ),
  }
  nan_shape = _MOSAIC["aligned"]
  unsupported_out_blocks = (128,)  # wider than a warpgroup's 64-row tile
  race_shape = None if ON_GPU else _MOSAIC["aligned"]
