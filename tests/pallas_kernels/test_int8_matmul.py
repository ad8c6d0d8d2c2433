"""Block-scaled INT8 GEMM kernels of every implementation: int8_matmul_base.py.

The Pallas kernel runs on three shapes, the Hopper kernel on fewer cases
(shapes: ``benchmarks/shapes.py``).
"""

import dataclasses

import jax
import pytest

from benchmarks.shapes import shape
from pallas_kernels import int8_matmul as pallas_int8_matmul
from pallas_kernels.mosaic import default_config
from pallas_kernels.mosaic import int8_matmul as mosaic_int8_matmul
from tests.pallas_kernels.int8_matmul_base import (
  Int8MatmulTestBase,
  Int8OutCase,
)
from tests.pallas_kernels.kernel_support import (
  MOSAIC_BMNK,
  ON_GPU,
  assert_same,
  finished,
  int8_operands,
)

NEAREST, SR = "nearest", "stochastic"
TINY, TINY_K = shape("tiny_ragged").bmnk, shape("tiny_ragged_k").bmnk
ALIGNED, RAGGED, EXACT = MOSAIC_BMNK
SEEDS = {NEAREST: (None,), SR: (0, 77)}  # of the Pallas INT8-out cases


def _cases(blocks_by_shape, bmnk=lambda name: shape(name).bmnk):
  """{"name-block": (bmnk, block)}."""
  return {
    f"{name}-{block}": (bmnk(name), block)
    for name, blocks in blocks_by_shape.items()
    for block in blocks
  }


class TestPallasInt8Matmul(Int8MatmulTestBase):
  kernels = pallas_int8_matmul
  interpret = True
  exact_cases = general_cases = _cases(
    dict.fromkeys(("tiny_aligned", "tiny_ragged", "tiny_ragged_k"), (32, 128))
  )
  same_bits_as_xla = True
  bf16_case = (TINY_K, 128, False)
  int8_out_cases = {
    f"{block}-{r}": Int8OutCase(TINY, block, 32, r, False, SEEDS[r])
    for block in (32, 128)
    for r in (NEAREST, SR)
  } | {"128-out128": Int8OutCase(TINY_K, 128, 128, NEAREST, exact=False)}
  nan_shape = TINY
  has_jetfire_helpers = True


# pairs: K = 128, one pipeline step, four CTA tiles on two interpreted SMs
# (a CTA's second tile came out wrong before K was padded to two steps).
MOSAIC = dict(
  aligned=ALIGNED, ragged=RAGGED, pairs=shape("small_pairs").bmnk
).get


class TestMosaicInt8Matmul(Int8MatmulTestBase):
  kernels = mosaic_int8_matmul
  interpret = None  # the Mosaic GPU interpreter without a GPU
  exact_cases = _cases(
    {"aligned": (32, 128), "ragged": (32, 64), "pairs": (128,)}, MOSAIC
  )
  general_cases = _cases({"ragged": (32, 128)}, MOSAIC)
  same_bits_as_xla = not ON_GPU  # the interpreter; a GPU may fuse FMAs
  bf16_case = (ALIGNED, 128, True)
  int8_out_cases = {
    "32-nearest": Int8OutCase(EXACT, 32, 32, NEAREST, True),
    "32-stochastic": Int8OutCase(RAGGED, 32, 32, SR, True, (2**32 - 3,)),
    "128-out64-stochastic": Int8OutCase(EXACT, 128, 64, SR, True, (2**32 - 3,)),
  }
  nan_shape = ALIGNED
  unsupported_out_blocks = (128,)  # wider than a warpgroup's 64-row tile
  race_shape = None if ON_GPU else ALIGNED


@pytest.mark.parametrize("cluster", ["m", "n"])
def test_mosaic_2cta_clusters_give_the_same_bits(cluster):
  """A clustered config (one TMA load of the shared operand multicast to
  both CTAs of a pair) computes the same GEMM as the default config."""
  bmnk = shape("small_pairs").bmnk
  ops = int8_operands(bmnk, 128, exact=False, seed=4)
  base = default_config(promoted=True, n_sub=1, out_itemsize=4)
  run = lambda config: finished(  # noqa: E731
    jax.jit(
      lambda *ops: mosaic_int8_matmul.int8_block_matmul(
        *ops, block=128, config=config
      )
    )(*ops)
  )
  paired = dataclasses.replace(base, cluster=cluster)
  assert_same(run(paired), run(base), f"cluster={cluster} vs default")


def test_mosaic_cluster_needs_pairs_of_tiles():
  ops = int8_operands(shape("small_aligned").bmnk, 128, exact=True, seed=1)
  base = default_config(promoted=True, n_sub=1, out_itemsize=4)
  config = dataclasses.replace(base, cluster="m")
  with pytest.raises(ValueError, match="an odd number along M"):
    mosaic_int8_matmul.int8_block_matmul(*ops, block=128, config=config)
