"""Quantize and dequantize kernels: the same bits as lowprec_jax.formats.

Every comparison is exact: the kernels, their plain-jnp twins and the
library's ``formats.quantize`` (under ``jit``, as the library runs it) must
produce identical codes and scales, for round-to-nearest and stochastic
rounding, aligned and ragged shapes, B = 1 and B > 1, and the special values
(all-zero tiles, NaN and inf poisoning, huge and tiny magnitudes, -0.0).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Fp8, Int8Block, QTensor, quantize
from pallas_kernels import quantize as Q
from tests.helpers import normal

ALIGNED, RAGGED = (1, 64, 128), (2, 70, 45)
E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2


def _bits(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize])


def assert_bitwise(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape and got.dtype == want.dtype
  np.testing.assert_array_equal(_bits(got), _bits(want))


@functools.partial(jax.jit, static_argnames=("fmt", "rounding"))
def _library(x, seed, *, fmt, rounding):
  qt = quantize(x, fmt, rounding=rounding, seed=seed)
  return qt.qvalue, qt.scale


def _check_int8(x, block, rounding, seed, transpose=True, twin=True):
  kw = dict(block=block, rounding=rounding, seed=seed)
  got = Q.quantize_int8_block(x, transpose=transpose, interpret=True, **kw)
  lib_seed = jnp.uint32(0 if seed is None else seed)
  want = _library(x, lib_seed, fmt=Int8Block(block), rounding=rounding)
  assert len(got) == (4 if transpose else 2)
  if twin:
    for g, t in zip(
      got, Q.quantize_int8_block_reference(x, transpose=transpose, **kw)
    ):
      assert_bitwise(g, t)
  assert_bitwise(got[0], want[0])
  assert_bitwise(got[1], want[1])
  if transpose:  # the transposed copy is the same quantization
    assert_bitwise(got[2], np.swapaxes(want[0], 1, 2))
    assert_bitwise(got[3], np.swapaxes(want[1], 1, 2))
  assert int(np.min(np.asarray(got[0]))) >= -127
  return got


@pytest.mark.parametrize("shape", [ALIGNED, RAGGED], ids=["aligned", "ragged"])
@pytest.mark.parametrize("block", [32, 128])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int8_block_matches_formats(shape, block, rounding):
  x = normal(shape, seed=block) * 3
  seeds = [None] if rounding == "nearest" else [11, 2**32 - 1]
  for seed in seeds:
    _check_int8(x, block, rounding, seed, twin=shape == RAGGED)


def test_int8_block_seeds_change_only_the_noise():
  x = normal(RAGGED, seed=5)
  q1 = _check_int8(x, 32, "stochastic", 1)[0]
  q2 = _check_int8(x, 32, "stochastic", 2)[0]
  diff = np.abs(np.asarray(q1, np.int32) - np.asarray(q2, np.int32))
  assert diff.max() == 1 and 0.2 < np.mean(diff) < 0.8


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16])
def test_int8_block_half_precision_inputs(dtype):
  x = normal((3, 40, 96), dtype, seed=3)
  _check_int8(x, 64, "stochastic", 9, transpose=False)


FP8_CASES = [  # (tile, dtype, rounding): every tile, both dtypes and roundings
  (None, E4M3, "nearest"),
  (None, E5M2, "stochastic"),
  ((1, None), E4M3, "stochastic"),
  ((1, None), E5M2, "nearest"),
  ((1, 128), E4M3, "nearest"),
  ((1, 32), E4M3, "stochastic"),
  ((128, 128), E4M3, "stochastic"),
  ((32, 32), E5M2, "nearest"),
  ((128, 1), E4M3, "stochastic"),  # x^T of 1 x 128 groups (fp8_block drhs)
]


def _check_fp8(x, tile, dtype, rounding, seed):
  kw = dict(dtype=dtype, tile=tile, rounding=rounding, seed=seed)
  got = Q.quantize_fp8(x, interpret=True, **kw)
  twin = Q.quantize_fp8_reference(x, **kw)
  fmt = Fp8("e4m3" if dtype == E4M3 else "e5m2", tile)
  lib_seed = jnp.uint32(0 if seed is None else seed)
  want = _library(x, lib_seed, fmt=fmt, rounding=rounding)
  for g, t, w in zip(got, twin, want):
    assert_bitwise(g, t)
    assert_bitwise(g, w)
  return got, fmt


@pytest.mark.parametrize("tile, dtype, rounding", FP8_CASES)
def test_fp8_matches_formats(tile, dtype, rounding):
  x = normal((2, 70, 300), seed=7) * 50  # ragged in M and K
  seed = 123 if rounding == "stochastic" else None
  (q, s), fmt = _check_fp8(x, tile, dtype, rounding, seed)
  out = Q.dequantize(q, s, tile=tile, out_dtype=jnp.float32, interpret=True)
  assert_bitwise(out, QTensor(q, s, fmt).dequantize(jnp.float32))


def _special_values(shape):
  """Tiles that are all zero, hold NaN or inf, huge, tiny, or -0.0."""
  x = np.array(normal(shape, seed=1))
  x[0, :32, :32] = 0.0
  x[0, 1, 40] = np.nan
  x[0, 40, 1] = -np.inf
  x[0, 33:64, 33:40] = np.finfo(np.float32).max * 0.75
  x[0, 33:64, 40:64] = -np.finfo(np.float32).max
  x[0, 64:, :32] = 1e-40 * 3  # below qmax * 2^-126 (and subnormal)
  x[0, 64:, 32:] = 3e-38
  x[0, 0, 0] = -0.0
  return jnp.asarray(x)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int8_special_values(rounding):
  x = _special_values((1, 96, 80))
  seed = 3 if rounding == "stochastic" else None
  q, s, _, _ = _check_int8(x, 32, rounding, seed)
  s = np.asarray(s)
  assert s[0, 0, 0] == 1.0 and np.isnan(s[0, 0, 1]) and np.isnan(s[0, 1, 0])
  assert np.all(np.asarray(q)[0, :32, 32:64] == 0)  # the NaN tile
  assert np.isfinite(s[0, 1, 1])  # huge but finite values
  assert s[0, 2, 0] == 1.0 and s[0, 2, 1] == 2.0**-126  # flushed, floored


@pytest.mark.parametrize(
  "tile, dtype, rounding",
  [(None, E4M3, "stochastic"), ((1, 32), E5M2, "nearest")],
)
def test_fp8_special_values(tile, dtype, rounding):
  x = _special_values((2, 96, 80))
  seed = 4 if rounding == "stochastic" else None
  (q, s), _ = _check_fp8(x, tile, dtype, rounding, seed)
  if tile is None:  # one NaN poisons the whole tensor
    assert np.isnan(np.asarray(s)).all() and not np.asarray(q, np.float32).any()


def test_int8_dequantize_matches_formats():
  x = normal(RAGGED, seed=2)
  q, s = Q.quantize_int8_block(x, block=32, interpret=True)
  for dtype in (jnp.float32, jnp.bfloat16):
    got = Q.dequantize(q, s, tile=(32, 32), out_dtype=dtype, interpret=True)
    assert_bitwise(got, QTensor(q, s, Int8Block(32)).dequantize(dtype))
    assert_bitwise(
      got, Q.dequantize_reference(q, s, tile=(32, 32), out_dtype=dtype)
    )


def test_bad_arguments_raise_with_names():
  x = jnp.ones((2, 8, 8))
  with pytest.raises(
    ValueError, match=r"x has shape \(8, 8\) and dtype float32; expected a 3-D"
  ):
    Q.quantize_int8_block(x[0], block=32)
  with pytest.raises(
    ValueError, match=r"x has shape \(2, 8, 8\) and dtype int32"
  ):
    Q.quantize_int8_block(x.astype(jnp.int32), block=32)
  with pytest.raises(ValueError, match="block must be one of"):
    Q.quantize_int8_block(x, block=48)
  with pytest.raises(ValueError, match="needs seed="):
    Q.quantize_int8_block(x, block=32, rounding="stochastic")
  with pytest.raises(ValueError, match="rounding must be"):
    Q.quantize_fp8(x, dtype=E4M3, tile=None, rounding="down")
  with pytest.raises(
    ValueError, match="dtype must be float8_e4m3fn or float8_e5m2"
  ):
    Q.quantize_fp8(x, dtype=jnp.int8, tile=None)
  with pytest.raises(
    NotImplementedError, match=r"tile \(None, 1\) has no quantize kernel"
  ):
    Q.quantize_fp8(x, dtype=E4M3, tile=(None, 1))
  q, s = Q.quantize_fp8(x, dtype=E4M3, tile=(1, 32), interpret=True)
  with pytest.raises(
    ValueError,
    match=r"s has shape \(2, 1, 1\).*expected float32 of shape \(2, 8, 1\)",
  ):
    Q.dequantize(q, s[:, :1], tile=(1, 32))
