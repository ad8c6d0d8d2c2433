"""QTensor as a pytree, its invariants, and quantize's argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import (
  Fp8,
  Int8Block,
  QTensor,
  dequantize,
  fake_quantize,
  quantize,
)
from tests.helpers import normal


def test_qtensor_is_a_pytree_of_two_arrays_with_static_format():
  qt = quantize(normal((40, 70)), Int8Block(32))
  leaves, treedef = jax.tree.flatten(qt)
  assert [x.dtype for x in leaves] == [jnp.int8, jnp.float32]
  again = jax.tree.unflatten(treedef, leaves)
  assert again.format == Int8Block(32) and again.dtype == jnp.float32
  out = jax.jit(lambda t: t)(qt)
  np.testing.assert_array_equal(out.qvalue, qt.qvalue)
  assert qt.nbytes == 40 * 70 + 2 * 3 * 4
  assert qt.shape == (40, 70) and qt.ndim == 2


def test_dequantize_returns_input_dtype_by_default():
  x = normal((8, 8), jnp.bfloat16)
  assert dequantize(quantize(x, Fp8.per_row())).dtype == jnp.bfloat16
  assert (
    dequantize(quantize(x, Fp8.per_row()), jnp.float32).dtype == jnp.float32
  )
  assert fake_quantize(x, Int8Block(32)).dtype == jnp.bfloat16


def test_validate_names_shapes_and_dtypes():
  qt = quantize(normal((40, 70)), Int8Block(32))
  bad_scale = QTensor(qt.qvalue, qt.scale[:, :1], qt.format)
  with pytest.raises(ValueError, match=r"scale has shape \(2, 1\).*expected"):
    bad_scale.validate()
  bad_codes = QTensor(qt.qvalue.astype(jnp.int32), qt.scale, qt.format)
  with pytest.raises(ValueError, match="qvalue has dtype int32"):
    dequantize(bad_codes)
  with pytest.raises(ValueError, match="expects a QTensor"):
    dequantize(jnp.ones(3))
  with pytest.raises(ValueError, match="at least 2 axes"):
    quantize(jnp.ones(40), Int8Block(32)).mT


@pytest.mark.parametrize(
  "x, match",
  [
    (jnp.ones((4, 4), jnp.int32), r"x has shape \(4, 4\) and dtype int32"),
    (jnp.ones((2,), jnp.complex64), "dtype complex64"),
    (jnp.ones((2, 2), jnp.float8_e4m3fn), "dtype float8_e4m3fn"),
    ([1.0, 2.0], "dtype list"),
  ],
)
def test_quantize_rejects_non_float_input(x, match):
  with pytest.raises(ValueError, match=match):
    quantize(x, Int8Block(32))


def test_quantize_rejects_bad_format_rounding_and_missing_seed():
  x = jnp.ones((4, 4))
  with pytest.raises(ValueError, match="format must be a QuantFormat"):
    quantize(x, "int8")
  with pytest.raises(ValueError, match="rounding must be one of"):
    quantize(x, Int8Block(32), rounding="up")
  with pytest.raises(ValueError, match="needs a seed"):
    quantize(x, Int8Block(32), rounding="stochastic")
  with pytest.raises(ValueError, match="seed must be a scalar"):
    quantize(
      x, Int8Block(32), rounding="stochastic", seed=jnp.ones(2, jnp.int32)
    )
  with pytest.raises(ValueError, match="seed has shape"):
    quantize(x, Int8Block(32), rounding="stochastic", seed=1.5)
  for seed in (2**32 + 5, -1):  # would silently alias seed 5 / 2**32 - 1
    with pytest.raises(ValueError, match=r"outside \[0, 2\*\*32\)"):
      quantize(x, Int8Block(32), rounding="stochastic", seed=seed)
