"""Quantize/dequantize kernels of every implementation: quantize_base.py.

The Pallas kernels run the cases of the original suite; the Mosaic GPU ones
fewer, smaller cases, with special values folded into the sweeps.
"""

import jax.numpy as jnp
import numpy as np

from pallas_kernels import quantize as pallas_quantize
from pallas_kernels.mosaic import quantize as mosaic_quantize
from tests.pallas_kernels.kernel_support import E4M3, E5M2, ON_GPU
from tests.pallas_kernels.quantize_base import (
  DequantizeCase,
  Fp8Case,
  QuantizeTestBase,
  fp8_case_table,
)

NEAREST, SR = "nearest", "stochastic"
BF16, F32 = jnp.bfloat16, jnp.float32


class TestPallasQuantize(QuantizeTestBase):
  kernels = pallas_quantize
  interpret = True
  aligned, ragged = (1, 64, 128), (2, 70, 45)
  sr_seeds = (11, 2**32 - 1)
  noise_seeds = (1, 2)
  half_precision_inputs = (jnp.bfloat16, np.float16)
  int8_special_roundings = (NEAREST, SR)
  # Every tile, both dtypes and roundings, on x ragged in M and K.
  fp8_cases = fp8_case_table(
    [
      (None, E4M3, NEAREST),
      (None, E5M2, SR),
      ((1, None), E4M3, SR),
      ((1, None), E5M2, NEAREST),
      ((1, 128), E4M3, NEAREST),
      ((1, 32), E4M3, SR),
      ((128, 128), E4M3, SR),
      ((32, 32), E5M2, NEAREST),
      ((128, 1), E4M3, SR),  # x^T of 1 x 128 groups (fp8_block drhs)
    ],
    shape=(2, 70, 300),
  )
  fp8_special_cases = fp8_case_table(
    [(None, E4M3, SR), ((1, 32), E5M2, NEAREST)], shape=(2, 96, 80)
  )
  dequantize_cases = {
    key: DequantizeCase(c.dtype, c.tile, c.rounding, c.shape)
    for key, c in fp8_cases.items()
  } | {
    "int8-32x32": DequantizeCase("int8", (32, 32), NEAREST, ragged, (F32, BF16))
  }


class TestMosaicQuantize(QuantizeTestBase):
  kernels = mosaic_quantize
  interpret = None  # the Mosaic GPU interpreter without a GPU
  aligned = (1, 2048, 4096) if ON_GPU else (1, 64, 256)
  ragged = (2, 1000, 1000) if ON_GPU else (2, 70, 45)
  sweep_with_special_values = True
  sr_seeds = (2**32 - 1,)
  # Square blocks and per-tensor on bf16 x; per-row, 1 x G and G x 1 scales
  # (row/column reductions in the WGMMA layout) with special values, ragged
  # but for one aligned bf16 case; per-tensor and 1 x 128 on ragged f32 x.
  fp8_cases = fp8_case_table(
    [  # tile, dtype, rounding, shape, x dtype, with special values
      (None, E4M3, NEAREST, aligned, BF16),
      ((128, 128), E4M3, NEAREST, aligned, BF16),
      (None, E5M2, SR, aligned, BF16),
      ((128, 128), E5M2, SR, aligned, BF16),
      ((32, 32), E4M3, NEAREST, ragged, BF16),
      ((32, 32), E5M2, SR, ragged, BF16),
      ((1, 128), E4M3, NEAREST, aligned, BF16, True),
      ((1, None), E5M2, SR, ragged, F32, True),
      ((1, 128), E5M2, SR, ragged, F32, True),
      ((1, 32), E4M3, NEAREST, ragged, F32, True),
      ((128, 1), E5M2, SR, ragged, F32, True),
      ((64, 1), E4M3, NEAREST, ragged, F32, True),
      (None, E4M3, NEAREST, ragged),
      ((1, 128), E4M3, SR, ragged),
    ]
  )
  fp8_special_cases = {"tensor": Fp8Case(None, E4M3, NEAREST, ragged)}
  # fp8_block's g in 1 x 128 and 128 x 1 groups from one read.
  dual_cases = {
    "aligned-bf16": ((1, 256, 384), BF16, (1, 128), (128, 1)),
    "ragged-f32": ((2, 200, 300), F32, (1, 128), (128, 1)),
  }
  # fp8_block's 1 x 128 x requantized as 128 x 1 groups (ragged M and K);
  # SR too, though no recipe asks for it.
  requantize_cases = {
    "1x128-128x1-e4m3-nearest": (
      (2, 200, 300),
      (1, 128),
      (128, 1),
      E4M3,
      NEAREST,
    ),
    "1x128-128x1-e5m2-sr": ((1, 130, 256), (1, 128), (128, 1), E5M2, SR),
  }
  dequantize_cases = {
    "tensor": DequantizeCase(E4M3, None, NEAREST, ragged, (F32, BF16)),
    "32x32": DequantizeCase(E4M3, (32, 32), NEAREST, ragged, (F32, BF16)),
  }
  unsupported_tiles = (
    ("quantize_fp8", (1, 16), r"\(1, 16\)"),
    ("quantize_fp8", (32, 1), r"\(32, 1\)"),
    ("dequantize", (1, 128), r"dequantize.*\(1, 128\)"),
  )
  detects_races = not ON_GPU  # an interpreter feature
  corrects_reciprocal = True
