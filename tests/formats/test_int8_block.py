"""INT8 square-block quantization against hand-computed codes and bounds."""

import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Int8Block, quantize, scale_shape
from tests.helpers import normal


def test_rtn_codes_with_unit_scale_round_half_to_even():
  # absmax 127 -> scale exactly 1, so the codes are rint(x), ties to even.
  x = jnp.array([[0.0, 63.5, -127.0, 1.5, 2.5, -0.5, -1.5, 0.49]])
  qt = quantize(x, Int8Block(32))
  assert qt.scale.tolist() == [[1.0]]
  assert qt.qvalue.tolist() == [[0, 64, -127, 2, 2, 0, -2, 0]]


def test_rtn_codes_with_scale_two_and_two_blocks():
  # Block (0, 0) has absmax 254 -> scale 2; block (0, 1) absmax 12.7 -> 0.1.
  x = np.zeros((32, 64), np.float32)
  x[0, :4] = [254.0, 3.0, 5.0, -7.0]  # /2 = 127, 1.5, 2.5, -3.5
  x[5, 32:35] = [12.7, -1.0, 0.05]  # /0.1 = 127, -10, 0.5
  qt = quantize(jnp.asarray(x), Int8Block(32))
  np.testing.assert_allclose(qt.scale, [[2.0, np.float32(12.7) / 127]])
  assert qt.qvalue[0, :4].tolist() == [127, 2, 2, -4]
  assert qt.qvalue[5, 32:35].tolist() == [127, -10, 0]  # 0.05/0.1 ~ 0.5 -> 0
  assert int(jnp.count_nonzero(qt.qvalue)) == 6


@pytest.mark.parametrize(
  "shape",
  [(1, 1), (32, 32), (31, 33), (65, 100), (3, 70, 45), (100,), (2, 1, 130)],
)
@pytest.mark.parametrize("block", [32, 64, 128])
def test_scale_grid_covers_ragged_tails(shape, block):
  qt = quantize(normal(shape), Int8Block(block))
  assert qt.qvalue.shape == shape and qt.qvalue.dtype == jnp.int8
  assert qt.scale.shape == scale_shape(shape, (block, block))
  assert qt.scale.ndim == len(shape)
  qt.validate()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape", [(31, 33), (65, 100), (3, 70, 45), (100,)])
@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_error_at_most_half_a_step(dtype, shape, block, seed):
  """|x - q s| <= s/2 per element (RTN), with s the element's block scale.

  The only extra error is the fp32 product q*s and the fp32 y = x*(1/s):
  both relative 2^-24, i.e. at most 127 * s * 2^-23 absolute; we allow s/2
  plus that.
  """
  x = normal(shape, dtype, seed=seed, scale=3.0)
  qt = quantize(x, Int8Block(block))
  xf = np.asarray(x.astype(jnp.float32), np.float64)
  err = np.abs(np.asarray(qt.dequantize(jnp.float32), np.float64) - xf)
  s = _expand(np.asarray(qt.scale), block, shape)
  assert np.all(err <= s / 2 + 127 * s * 2.0**-23)
  assert np.asarray(qt.dequantize()).dtype == dtype  # back in x's dtype


def _expand(scale, block, shape):
  if len(shape) == 1:
    return np.repeat(scale, block)[: shape[0]]
  full = np.repeat(np.repeat(scale, block, axis=-2), block, axis=-1)
  return full[..., : shape[-2], : shape[-1]]


def test_codes_never_minus_128():
  x = normal((64, 64), seed=3) * 100
  for rounding in ("nearest", "stochastic"):
    q = quantize(x, Int8Block(32), rounding=rounding, seed=0).qvalue
    assert int(q.min()) >= -127 and int(q.max()) <= 127


@pytest.mark.parametrize("shape", [(64, 96), (45, 70), (2, 33, 40)])
@pytest.mark.parametrize("block", [32, 128])
def test_transpose_is_exact_for_square_blocks(shape, block):
  """Quantizing x^T gives x's codes and scale grid transposed."""
  x = normal(shape, seed=4)
  direct = quantize(jnp.swapaxes(x, -1, -2), Int8Block(block))
  via = quantize(x, Int8Block(block)).mT
  np.testing.assert_array_equal(direct.qvalue, via.qvalue)
  np.testing.assert_array_equal(direct.scale, via.scale)
  assert direct.format == via.format


@pytest.mark.parametrize("block", [0, 16, 48, 256, 32.0, "32", True])
def test_invalid_block_sizes_raise(block):
  with pytest.raises(ValueError, match="Int8Block.block"):
    Int8Block(block)
