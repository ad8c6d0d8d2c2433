"""Documented results for zeros, NaN, +-inf, huge and tiny magnitudes."""

import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Fp8, Int8Block, quantize
from tests.helpers import fp8_ulp

FORMATS = [
  Int8Block(32),
  Fp8.per_tensor("e4m3"),
  Fp8.blocks(32, "e5m2"),
  Fp8.groups(16, "e4m3", scale_storage="bfloat16"),
]
IDS = [f.name for f in FORMATS]


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_all_zero_block_gets_scale_one_and_zero_codes(fmt):
  x = jnp.zeros((32, 64))
  qt = quantize(x, fmt, rounding="stochastic", seed=1)
  assert bool(jnp.all(qt.scale == 1.0))
  assert bool(jnp.all(qt.qvalue.astype(jnp.float32) == 0))
  assert bool(jnp.all(qt.dequantize() == 0))


def test_zero_block_beside_nonzero_block_is_unaffected():
  x = jnp.zeros((32, 64)).at[:, 32:].set(1.0)
  qt = quantize(x, Int8Block(32))
  np.testing.assert_array_equal(qt.scale, [[1.0, np.float32(1) / 127]])
  np.testing.assert_array_equal(qt.dequantize()[:, :32], 0.0)
  np.testing.assert_allclose(qt.dequantize()[:, 32:], 1.0, rtol=2**-23)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize(
  "fmt", [Int8Block(32), Fp8.blocks(32, "e5m2")], ids=str
)
def test_non_finite_value_poisons_only_its_block(bad, fmt):
  x = jnp.ones((64, 64)).at[3, 40].set(bad)  # block (0, 1)
  qt = quantize(x, fmt)
  scale = np.asarray(qt.scale)
  assert (
    np.isnan(scale[0, 1]) and np.isfinite(np.delete(scale.ravel(), 1)).all()
  )
  dq = np.asarray(qt.dequantize())
  assert np.isnan(dq[:32, 32:]).all()  # the whole block reads as NaN
  assert np.isfinite(np.delete(dq.reshape(2, 32, 2, 32), 1, axis=2)).all()
  codes = np.asarray(qt.qvalue.astype(jnp.float32))
  assert (codes[:32, 32:] == 0).all()


def test_non_finite_value_poisons_whole_tensor_when_per_tensor():
  qt = quantize(jnp.ones((4, 4)).at[0, 0].set(jnp.nan), Fp8.per_tensor())
  assert bool(jnp.all(jnp.isnan(qt.dequantize())))


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_huge_values_stay_finite(fmt):
  big = float(np.finfo(np.float32).max)
  x = jnp.full((32, 32), big).at[0, 1].set(-big).at[0, 2].set(1e30)
  qt = quantize(x, fmt)
  dq = np.asarray(qt.dequantize(), np.float64)
  assert np.isfinite(dq).all()
  assert abs(dq[0, 0] - big) <= 2e-2 * big and abs(dq[0, 1] + big) <= 2e-2 * big


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_tiny_values_use_the_scale_floor(fmt):
  """absmax below qmax * 2^-126: scale = 2^-126, error <= scale/2 still."""
  x = jnp.full((32, 32), 1e-37, jnp.float32).at[0, 0].set(-3e-37)
  qt = quantize(x, fmt)
  assert bool(jnp.all(qt.scale == 2.0**-126))
  err = np.abs(np.asarray(qt.dequantize() - x, np.float64))
  y = np.asarray(x, np.float64) / 2.0**-126  # ~8.5 and -25.5
  if fmt.family == "int8":
    step = np.ones_like(y)
  else:
    step = fp8_ulp(y, fmt.storage_dtype)
  assert np.all(err <= step / 2 * 2.0**-126)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_small_normal_values_keep_relative_precision(fmt):
  x = jnp.linspace(-1e-30, 1e-30, 1024).reshape(32, 32)
  qt = quantize(x, fmt)
  assert float(qt.scale.max()) > 2.0**-126
  rel = float(jnp.max(jnp.abs(qt.dequantize() - x)) / 1e-30)
  assert rel <= (1 / 127 if fmt.family == "int8" else 2.0**-2)


def test_subnormal_inputs_quantize_like_zero():
  """XLA flushes float32 subnormals; the result is exactly zero."""
  qt = quantize(jnp.full((2, 2), 1e-40), Int8Block(32))
  assert bool(jnp.all(qt.dequantize() == 0))


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_zero_size_input_quantizes_to_zero_size(fmt, shape):
  """Every format, per-tensor FP8 included (its absmax over no element is
  0, the all-zero rule's scale)."""
  qt = quantize(jnp.zeros(shape), fmt)
  assert qt.shape == shape and qt.dequantize().shape == shape
