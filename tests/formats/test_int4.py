"""The Int4 format: packed codes, absmax scales over tiles, special values."""

import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Int4, QTensor, quantize, scale_shape
from lowprec_jax.ops import GemmQuant, OperandQuant
from pallas_kernels import tiles
from tests.helpers import normal, raises

FORMATS = [
  Int4.per_tensor(),
  Int4((1, None)),
  Int4.groups(32),
  Int4.blocks(16),
  Int4((64, 1)),
]


def test_codes_by_hand_with_scale_one():
  # absmax 7 -> scale 1: codes are rint(x), ties to even, packed low first.
  x = jnp.array([[7.0, -2.5, 0.5, 1.5, -7.0, 3.2]])
  qt = quantize(x, Int4.per_tensor())
  assert qt.scale.tolist() == [[1.0]]
  assert qt.codes.tolist() == [[7, -2, 0, 2, -7, 3]]
  assert qt.qvalue.tolist() == [[0xE7, 0x20, 0x39]]
  assert qt.shape == (1, 6) and qt.qvalue.shape == (1, 3)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("shape", [(2, 64), (6, 130), (3, 34, 96)])
def test_error_is_at_most_half_a_step_over_ragged_tiles(fmt, shape):
  x = normal(shape, seed=len(shape))
  qt = quantize(x, fmt)
  assert qt.qvalue.dtype == jnp.uint8 and qt.shape == shape
  assert qt.scale.shape == scale_shape(shape, fmt.tile)
  codes = qt.codes
  assert int(codes.min()) >= -7 and int(codes.max()) <= 7  # -8 never
  step = np.asarray(qt.dequantize() - x)
  half = tiles.expand_scale(qt.scale, fmt.tile, shape) / 2
  assert bool((np.abs(step) <= half * (1 + 2**-20)).all())


def test_stochastic_rounding_is_unbiased():
  x = jnp.broadcast_to(jnp.array([7.0, 0.3, -2.6, 5.51]), (4096, 4))
  qt = quantize(x, Int4((1, None)), rounding="stochastic", seed=5)
  mean = jnp.mean(qt.dequantize(), axis=0)
  # 4096 draws of a Bernoulli step of 1: std of the mean <= 0.5/64.
  np.testing.assert_allclose(mean, x[0], atol=4 * 0.5 / 64)


def test_transpose_repacks_and_turns_the_tile():
  x = normal((4, 32, 64), seed=2)
  qt = quantize(x, Int4.groups(32))
  t = qt.mT
  assert t.shape == (4, 64, 32) and t.format == Int4((32, 1))
  np.testing.assert_array_equal(t.codes, jnp.swapaxes(qt.codes, 1, 2))
  np.testing.assert_array_equal(
    t.dequantize(), jnp.swapaxes(qt.dequantize(), 1, 2)
  )


def test_special_values():
  x = jnp.zeros((2, 32)).at[0, 3].set(jnp.nan).at[1, 5].set(2.0)
  qt = quantize(x, Int4((1, None)))
  assert bool(jnp.isnan(qt.scale[0, 0])) and not qt.codes[0].any()
  assert bool(jnp.isnan(qt.dequantize()[0]).all())
  zeros = quantize(jnp.zeros((2, 4)), Int4.per_tensor())
  assert zeros.scale.tolist() == [[1.0]] and not zeros.codes.any()
  huge = quantize(jnp.array([[3e38, -3e38]]), Int4.per_tensor())
  assert bool(jnp.isfinite(huge.dequantize()).all())


def test_names_and_transposes():
  assert Int4.per_tensor().name == "int4_tensor"
  assert Int4.groups(64).name == "int4_1x64"
  assert Int4.blocks(32).transpose() == Int4.blocks(32)
  assert Int4.groups(32).family == "int4"


def test_bad_input():
  with raises(r"last axis, which must be even; got shape \(3, 5\)"):
    quantize(jnp.ones((3, 5)), Int4.per_tensor())
  with raises("Int4 group size must be one of"):
    Int4.groups(512)
  with raises(r"Int4.tile_shape must be None.*got \(1, 24\)"):
    Int4.groups(24)
  with raises(r"Int4.tile_shape must be None"):
    Int4((2, 3))
  with raises("expects uint8"):
    QTensor(jnp.zeros((2, 2), jnp.int8), jnp.ones((1, 1)), Int4()).validate()
  with raises("INT4 GEMMs are not available through DotQuantConfig"):
    GemmQuant(lhs=OperandQuant(format=Int4()), rhs=OperandQuant(format=Int4()))
