"""Kernel implementations of quantized_dot_general against "xla": see
implementation_base.py.

``"pallas"`` runs the portable kernels in the Pallas interpreter on a 3-D
Linear ragged against every tile; ``"mosaic"`` runs the Hopper kernels in
the (slower) Mosaic GPU interpreter on a 2-D aligned one, and compiled on a
realistic shape on the H200 (``ON_GPU``).
"""

import jax
import pytest

from benchmarks.shapes import shape
from lowprec_jax.ops import census
from tests.helpers import normal
from tests.ops.implementation_base import QuantizedDotTestBase, linear
from tests.ops.reference import KERNEL_RECIPES

ON_GPU = jax.default_backend() == "gpu"
INT8 = ("int8", "int8", "int32")
E4M3 = ("float8_e4m3fn", "float8_e4m3fn", "float32")
BF16 = ("bfloat16", "bfloat16", "float32")


class TestPallasImplementation(QuantizedDotTestBase):
  implementation = "pallas"
  shape = shape("linear_3d_ragged")
  int8_bitwise = True
  bf16_recipes = ("jetfire_int8",)
  # Triton has no mixed FP8 dot: E5M2 x E4M3 is widened to bf16; everything
  # else stays 8-bit.
  census_dots = {
    "jetfire_int8": dict(fwd=INT8, dlhs=INT8, drhs=INT8),
    "fp8_current": dict(fwd=E4M3, dlhs=BF16, drhs=BF16),
    "fp8_block": dict(fwd=E4M3, dlhs=E4M3, drhs=E4M3),
  }
  # x (and x^T for drhs), w as stored (and w^T for the forward), g (and
  # g^T): each one kernel writing both layouts.
  expected_kernels = {
    "jetfire_int8": [("lpj_quantize_int8_block", 4)] * 3
    + [("lpj_int8_block_matmul", 1)] * 3
  }


class TestMosaicImplementation(QuantizedDotTestBase):
  implementation = "mosaic"
  shape = shape("gpu_linear" if ON_GPU else "small_aligned")
  int8_bitwise = not ON_GPU  # a GPU may fuse the promotion's multiply-add
  rel_err_budget = 2.0**-7 if ON_GPU else 1e-5
  census_dots = {
    "fp8_current": dict(
      fwd=E4M3,
      dlhs=("float8_e5m2", "float8_e4m3fn", "float32"),
      drhs=("float8_e4m3fn", "float8_e5m2", "float32"),  # x^T . g^T
    )
  }
  # x, w (as stored) and g each quantized once by a kernel writing both
  # layouts; fp8_block's g is read once for its 1 x 128 groups and its
  # groups along M (a 128 x 1 tile of g, its codes transposed after), and
  # its x^T is requantized from the saved 1 x 128 x in one kernel.
  expected_kernels = {
    "jetfire_int8": [("lpj_mosaic_quantize_int8_transpose", 3)] * 3
    + [("lpj_mosaic_int8_block32_matmul", 1)] * 3,
    "fp8_current": [
      ("lpj_mosaic_absmax", 1),
      ("lpj_mosaic_quantize_fp8_transpose", 2),
    ]
    * 3  # x, w and g: per-tensor absmax, then quantize
    + [("lpj_mosaic_fp8_matmul", 1)] * 3,
    "fp8_block": [("lpj_mosaic_quantize_fp8_groups", 2)]  # x, 1 x 128
    + [("lpj_mosaic_quantize_fp8_dual", 4)]
    + [("lpj_mosaic_requantize_fp8_columns", 2)]
    + [("lpj_mosaic_quantize_fp8_transpose", 3)]  # w, 128 x 128
    + [("lpj_mosaic_fp8_matmul", 1)] * 3,
  }


@pytest.mark.skipif(ON_GPU, reason="None picks a kernel on a GPU")
@pytest.mark.parametrize("recipe", ["jetfire_int8", "fp8_block"])
def test_none_picks_xla_on_cpu(recipe):
  x, w = normal((8, 32), seed=0), normal((32, 16), seed=1)

  def loss(a, b):
    return (linear(a, b, KERNEL_RECIPES[recipe], seed=1) ** 2).sum()

  records = census(jax.grad(loss, argnums=(0, 1)), x, w).records
  assert {r.implementation for r in records} == {"xla"}
