"""Stochastic rounding: unbiased, on the grid, and reproducible from a key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Fp8, Int8Block, quantize
from pallas_kernels.numerics import round_fp8, round_int
from tests.helpers import fp8_ulp, normal

FORMATS = [Int8Block(32), Fp8.per_tensor("e4m3"), Fp8.groups(16, "e5m2")]


def _mean_abs_bias(x, fmt, n):
  """Mean over elements of |E_n[x_hat] - x| / step, for n seeds."""
  dq = jax.vmap(
    lambda s: quantize(x, fmt, rounding="stochastic", seed=s).dequantize()
  )(jnp.arange(n, dtype=jnp.uint32))
  qt = quantize(x, fmt)
  step = _step(x, qt, fmt)
  return float(jnp.mean(jnp.abs(dq.mean(0) - x) / step))


def _step(x, qt, fmt):
  """Grid spacing around each element in x's units."""
  s = qt.dequantize() / jnp.where(
    qt.qvalue == 0, 1, qt.qvalue.astype(jnp.float32)
  )
  s = jnp.where(qt.qvalue == 0, jnp.max(jnp.abs(x)) / fmt.qmax, s)
  if fmt.family == "int8":
    return s
  y = np.asarray(x / s)
  return jnp.asarray(fp8_ulp(y, fmt.storage_dtype), jnp.float32) * s


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_bias_shrinks_like_one_over_sqrt_n(fmt):
  """The Monte-Carlo mean converges to x: error ~ sqrt(p(1-p)/n) steps.

  With 16x more samples the mean error must drop by ~4x (between 2.5x and
  6.4x allows for sampling noise over 4096 elements); and at n = 1024 it
  must be below the bound E|mean| <= sqrt(1/4 / n) ~ 0.016 steps.
  """
  x = normal((64, 64), seed=2)
  e64 = _mean_abs_bias(x, fmt, 64)
  e1024 = _mean_abs_bias(x, fmt, 1024)
  assert 2.5 < e64 / e1024 < 6.4
  assert e1024 < np.sqrt(0.25 / 1024)
  # RTN is biased per element (deterministic error up to half a step).
  rtn = quantize(x, fmt).dequantize()
  assert (
    float(jnp.mean(jnp.abs(rtn - x) / _step(x, quantize(x, fmt), fmt))) > 0.2
  )


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_same_key_same_bits(fmt):
  x = normal((70, 45), seed=3)
  a = quantize(x, fmt, rounding="stochastic", seed=jax.random.key(9))
  b = quantize(x, fmt, rounding="stochastic", seed=jax.random.key(9))
  c = quantize(x, fmt, rounding="stochastic", seed=jax.random.key(10))
  av, bv, cv = (
    np.asarray(
      t.qvalue.view(jnp.uint8) if t.qvalue.dtype != jnp.int8 else t.qvalue
    )
    for t in (a, b, c)
  )
  np.testing.assert_array_equal(av, bv)
  assert (av != cv).any()
  jitted = jax.jit(
    lambda x, k: quantize(x, fmt, rounding="stochastic", seed=k).qvalue
  )(x, jax.random.key(9))
  np.testing.assert_array_equal(
    np.asarray(jitted.view(jnp.uint8) if jitted.dtype != jnp.int8 else jitted),
    av,
  )


def test_int_stochastic_lands_on_neighbours():
  y = jnp.linspace(-126.9, 126.9, 1001)
  for s in range(4):
    u = jax.random.uniform(jax.random.key(s), y.shape)
    r = round_int(y, 127.0, u)
    assert bool(jnp.all((r == jnp.floor(y)) | (r == jnp.ceil(y))))
  # The top of the grid never rounds past qmax.
  assert (
    float(round_int(jnp.float32(127.0), 127.0, jnp.float32(1 - 2**-24))) == 127
  )


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2])
def test_fp8_stochastic_lands_on_neighbours(dtype):
  fmax = float(jnp.finfo(dtype).max)
  y = jnp.concatenate(
    [jnp.linspace(-fmax, fmax, 4001), jnp.linspace(-0.05, 0.05, 401)]
  )
  down = np.asarray(y.astype(jnp.float32), np.float64)
  grid = np.unique(
    np.asarray(jnp.arange(256, dtype=jnp.uint8).view(dtype), np.float64)
  )
  grid = grid[np.isfinite(grid)]
  lo = grid[np.searchsorted(grid, down, side="right") - 1]
  hi = grid[np.minimum(np.searchsorted(grid, down, side="left"), len(grid) - 1)]
  for s in range(4):
    u = jax.random.uniform(jax.random.key(s), y.shape)
    r = np.asarray(round_fp8(y, np.dtype(dtype), u).astype(jnp.float32))
    assert np.all((r == lo) | (r == hi))


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2])
def test_fp8_casts_saturate(dtype):
  fmax = float(jnp.finfo(dtype).max)
  y = jnp.array([1e9, -1e9, fmax * 1.01, -fmax * 1.01])
  for u in (None, jnp.full(y.shape, 0.999)):
    r = round_fp8(y, np.dtype(dtype), u).astype(jnp.float32)
    assert r.tolist() == [fmax, -fmax, fmax, -fmax]
