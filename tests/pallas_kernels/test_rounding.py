"""The kernel-safe numerics give exactly the bits of XLA's own primitives.

Everything here is a bit-for-bit comparison (the sign of zero included) of
:mod:`pallas_kernels.numerics` against independent oracles written with
XLA's primitives (``lax.round``, ``jnp.floor``, f32 division, the hardware
FP8 cast) or numpy, over a sweep of 2^20 bit patterns spread evenly over all
2^32, plus the values where rounding decides: integers, half-integers and
their f32 neighbours, every FP8 value, the midpoints between FP8 neighbours
and the f32 values next to them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import numerics as R
from tests.pallas_kernels.kernel_support import bits

F8 = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}


# Oracles from XLA's primitives: rounding as lax.round / jnp.floor and the
# hardware FP8 cast, SR as floor(|y| / ulp + u) with an exact division.
def _oracle_round_int(y, qmax, u):
  if u is None:
    r = lax.round(y, lax.RoundingMethod.TO_NEAREST_EVEN)
  else:
    r = jnp.floor(y + u)
  return jnp.clip(r, -qmax, qmax)


def _oracle_ulp(a, dtype):
  info = jnp.finfo(dtype)
  exponent = (lax.bitcast_convert_type(a, jnp.uint32) >> 23).astype(jnp.int32)
  exponent = jnp.maximum(exponent - 127, info.minexp)
  biased = (exponent - info.nmant + 127).astype(jnp.uint32) << 23
  return lax.bitcast_convert_type(biased, jnp.float32)


def _oracle_round_fp8(y, dtype, u):
  fmax = float(jnp.finfo(dtype).max)
  y = jnp.clip(y, -fmax, fmax)
  if u is None:
    return y.astype(dtype)
  a = jnp.abs(y)
  ulp = _oracle_ulp(a, dtype)
  r = jnp.minimum(jnp.floor(a / ulp + u) * ulp, fmax)
  return jnp.where(y < 0, -r, r).astype(dtype)


def _oracle_scale(absmax, qmax):
  """The scale rule in numpy f32 (NaN for non-finite absmax); subnormal
  absmax flushes to zero, as XLA does on CPU and GPU."""
  absmax = np.asarray(absmax, np.float32)
  absmax = np.where(absmax < np.finfo(np.float32).tiny, 0, absmax)
  f32max = float(np.finfo(np.float32).max)
  cap = np.float32(f32max / qmax)
  while float(cap) * qmax > f32max:
    cap = np.nextafter(cap, np.float32(0))
  scale = np.maximum(absmax * np.float32(1.0 / qmax), np.float32(2.0**-126))
  scale = np.where(absmax == 0, np.float32(1), np.minimum(scale, cap))
  return np.where(np.isfinite(absmax), scale, np.float32(np.nan))


def _assert_same_bits(got, want, ignore_nan=True):
  got, want = np.asarray(got), np.asarray(want)
  assert got.dtype == want.dtype and got.shape == want.shape
  same = bits(got) == bits(want)
  if ignore_nan:
    same |= np.isnan(want.astype(np.float32)) & np.isnan(got.astype(np.float32))
  bad = np.flatnonzero(~same)
  assert bad.size == 0, (bad.size, got.ravel()[bad[:5]], want.ravel()[bad[:5]])


def _with_neighbours(values) -> np.ndarray:
  """Values and their two f32 neighbours on each side, both signs."""
  v = np.asarray(values, np.float32)
  out = [v]
  for direction in (np.inf, -np.inf):
    w = v
    for _ in range(2):
      with np.errstate(over="ignore"):  # f32 max steps to inf: wanted
        w = np.nextafter(w, np.float32(direction))
      out.append(w)
  v = np.concatenate(out)
  return np.concatenate([v, -v]).astype(np.float32)


def _bit_sweep() -> np.ndarray:
  patterns = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32)
  return patterns.view(np.float32)


def _integer_edges() -> np.ndarray:
  k = np.arange(-300, 301, dtype=np.float32)
  big = np.float32(2.0) ** np.arange(20, 26, dtype=np.float32)
  return _with_neighbours(np.concatenate([k, k + 0.5, big, big + 0.5]))


def test_rint_and_floor_match_lax_bit_for_bit():
  y = np.concatenate([_bit_sweep(), _integer_edges()])
  rne = functools.partial(
    lax.round, rounding_method=lax.RoundingMethod.TO_NEAREST_EVEN
  )
  _assert_same_bits(jax.jit(R.rint)(y), jax.jit(rne)(y))
  _assert_same_bits(jax.jit(R.floor)(y), jax.jit(jnp.floor)(y))


def _uniform_grid() -> np.ndarray:
  u = [0.0, 2.0**-24, 0.25, 0.5 - 2.0**-24, 0.5, 0.75, 1.0 - 2.0**-24]
  random = np.random.default_rng(0).integers(0, 2**24, 9) * 2.0**-24
  return np.asarray(u + list(random), np.float32)


@pytest.mark.parametrize("stochastic", [False, True], ids=["rtn", "sr"])
def test_round_int_matches_lax(stochastic):
  y = _integer_edges()
  y = np.concatenate([y, y * np.float32(1.0 / 3.0), [np.inf, -np.inf]])
  y = y[:, None].astype(np.float32)
  u = _uniform_grid()[None, :] if stochastic else None
  kernel = jax.jit(lambda y, u: R.round_int(y, 127.0, u))
  reference = jax.jit(lambda y, u: _oracle_round_int(y, 127.0, u))
  want = reference(np.broadcast_to(y, (y.shape[0], 16)), u)
  _assert_same_bits(kernel(np.broadcast_to(y, want.shape), u), want)


def _fp8_edges(name: str) -> np.ndarray:
  """Every FP8 value, the midpoints between neighbours, beyond the range."""
  dtype = F8[name]
  values = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
  values = np.unique(values[np.isfinite(values)])
  mids = (values[1:] + values[:-1]) / 2
  fmax = float(jnp.finfo(dtype).max)
  beyond = [fmax * 1.01, fmax * 2, 1e30, np.finfo(np.float32).max, 0.0]
  return _with_neighbours(np.concatenate([values, mids, beyond]))


@pytest.mark.parametrize("name", list(F8))
@pytest.mark.parametrize("stochastic", [False, True], ids=["rtn", "sr"])
def test_round_fp8_matches_the_cast(name, stochastic):
  dtype = F8[name]
  y = _fp8_edges(name)[:, None]
  u = _uniform_grid()[None, :] if stochastic else None
  y = np.broadcast_to(y, (y.shape[0], 16)).astype(np.float32)
  got = jax.jit(lambda y, u: R.round_fp8(y, dtype, u))(y, u)
  want = jax.jit(lambda y, u: _oracle_round_fp8(y, dtype, u))(y, u)
  _assert_same_bits(got, want)


def test_reciprocal_matches_division_over_all_exponents():
  rng = np.random.default_rng(1)
  exponents = rng.integers(1, 254, 2**20)
  mantissas = rng.integers(0, 2**23, 2**20)
  d = ((exponents << 23) | mantissas).astype(np.uint32).view(np.float32)
  edges = np.float32(2.0) ** np.arange(-126, 127, dtype=np.float32)
  edges = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf))])
  d = np.concatenate([d, edges, np.nextafter(edges * 2, np.float32(0))])
  want = jax.jit(lambda d: 1.0 / d)(d)
  _assert_same_bits(jax.jit(R.reciprocal_rn)(d), want, ignore_nan=False)


@pytest.mark.parametrize("qmax", [127.0, 448.0, 57344.0])
def test_tile_scale_matches_numpy(qmax):
  f32max = np.finfo(np.float32).max
  special = [0.0, 1e-38, 2.0**-126 * qmax, 1.0, qmax, 1e30, f32max]
  random = np.random.default_rng(2).lognormal(0, 8, 4096)
  absmax = np.concatenate([special, random, [np.inf, np.nan]]).astype(
    np.float32
  )
  ok = np.isfinite(absmax)
  scale, inverse = jax.jit(R.tile_scale, static_argnums=2)(
    np.where(ok, absmax, 0).astype(np.float32), ok, qmax
  )
  want = _oracle_scale(absmax, qmax)
  _assert_same_bits(scale, want)
  _assert_same_bits(inverse, jax.jit(lambda s: 1.0 / s)(want))


def test_helpers_inside_an_interpreted_kernel():
  """The same bits when the helpers run as a Pallas kernel body."""
  y = np.concatenate([_integer_edges(), _fp8_edges("e4m3")])
  y = np.resize(y, (len(y) // 128 + 1) * 128).reshape(-1, 128)
  d = np.abs(y) + np.float32(1.0)

  def kernel(y_ref, d_ref, rint_ref, floor_ref, recip_ref, fp8_ref):
    rint_ref[...] = R.rint(y_ref[...])
    floor_ref[...] = R.floor(y_ref[...])
    recip_ref[...] = R.reciprocal_rn(d_ref[...])
    fp8_ref[...] = R.round_fp8(y_ref[...], jnp.float8_e4m3fn, None)

  shapes = [jax.ShapeDtypeStruct(y.shape, jnp.float32)] * 3
  shapes.append(jax.ShapeDtypeStruct(y.shape, jnp.float8_e4m3fn))
  got = pl.pallas_call(kernel, out_shape=shapes, interpret=True)(y, d)
  _assert_same_bits(got[0], jax.jit(jnp.round)(y))
  _assert_same_bits(got[1], jax.jit(jnp.floor)(y))
  _assert_same_bits(got[2], jax.jit(lambda d: 1.0 / d)(d))
  fp8 = jax.jit(lambda y: _oracle_round_fp8(y, jnp.float8_e4m3fn, None))
  _assert_same_bits(got[3], fp8(y))
