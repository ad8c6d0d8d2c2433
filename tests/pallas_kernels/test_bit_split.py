"""Bit splitting: hand-computed splits, ranges, clipping, unbiasedness."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.bit_split import (
  bit_split,
  combined_codes,
  split_sigma,
)
from pallas_kernels.numerics import floor
from tests.helpers import normal, raises, rng


def _value(hi, lo, sigma):
  """(14 hi + lo) / sigma in f32."""
  return (14.0 * hi.astype(jnp.float32) + lo.astype(jnp.float32)) / sigma


def test_faithful_split_by_hand():
  # max|g| = 1 -> sigma = 98: G = 98 g.
  g = jnp.array([1.0, -0.5, 0.1, 0.0])  # G = 98, -49, 9.8, 0
  u = jnp.array([0.0, 0.0, 0.5, 0.0])
  hi, lo, sigma = bit_split(g, u, "faithful")
  assert float(sigma) == 98.0
  # 98/14 = 7 -> clipped to 6, lo = floor(98 - 84) = 14 -> clipped to 6;
  # -49/14 = -3.5 -> -4 (ties to even), lo = floor(-49 + 56) = 7 -> 6;
  # 9.8/14 = 0.7 -> 1, lo = floor(9.8 - 14 + 0.5) = -4.
  assert hi.tolist() == [6, -4, 1, 0]
  assert lo.tolist() == [6, 6, -4, 0]


def test_full_split_by_hand_never_clips_lo():
  # sigma = 105: the top value splits as hi 7 (7.5 -> 8 clipped), lo 7.
  g = jnp.array([1.0, -1.0, 0.5, -13 / 14])  # G = 105, -105, 52.5, -97.5
  u = jnp.array([0.25, 0.25, 0.75, 0.5])
  hi, lo, sigma = bit_split(g, u, "full")
  assert float(sigma) == 105.0
  assert hi.tolist() == [7, -7, 4, -7]
  # lo = floor(G - 14 hi + u): 7.25 -> 7, -6.75 -> -7, -3.5 + 0.75 -> -3,
  # 0.5 + 0.5 = 1.0 -> 1 (sigma * g rounds to -97.5 exactly here).
  assert lo.tolist() == [7, -7, -3, 1]


@pytest.mark.parametrize("split", ["faithful", "full"])
def test_parts_are_int4_and_reconstruct_within_one_step(split):
  g = normal((64, 96), seed=3)
  u = jnp.asarray(rng("u", split).random((64, 96)), jnp.float32)
  hi, lo, sigma = bit_split(g, u, split)
  assert hi.dtype == lo.dtype == jnp.int8
  assert -8 <= int(hi.min()) and int(hi.max()) <= 7
  assert -8 <= int(lo.min()) and int(lo.max()) <= 7
  err = jnp.abs(_value(hi, lo, sigma) - g)
  scaled = jnp.abs(g) * sigma
  if split == "full":
    # Unclipped: |error| < one grid step 1 / sigma everywhere.
    assert float(err.max()) < 1.0 / float(sigma)
  else:
    # Only values beyond the representable 90 (of 98) err by more.
    inside = scaled <= 90.0
    assert float(jnp.where(inside, err, 0).max()) < 1.0 / float(sigma)
    assert float(jnp.where(inside, 0, err).max()) > 1.0 / float(sigma)


def test_full_split_is_stochastic_rounding_of_sigma_g():
  # 14 hi + lo = floor(sigma g + u) exactly (the module docstring's identity).
  g = normal((32, 40), seed=9)
  u = jnp.asarray(rng("sr").random((32, 40)), jnp.float32)
  hi, lo, sigma = bit_split(g, u, "full")
  want = floor(jnp.clip(g * sigma, -105, 105) + u)
  np.testing.assert_array_equal(combined_codes(hi, lo), want.astype(jnp.int8))


def test_full_split_is_unbiased_and_faithful_is_biased_at_the_top():
  # E over u of (14 hi + lo) / sigma: exact (to the 2^-24 uniform grid) for
  # the full split; the faithful split clips values above 90 / 98 of max.
  g = jnp.array([1.0, 0.9, 0.6031, -0.377, 0.0123])  # 98 g: 98 ... 1.2
  n = 4096
  u = (jnp.arange(n, dtype=jnp.float32)[:, None] + 0.5) / n  # stratified
  for split, biased in (("full", False), ("faithful", True)):
    hi, lo, sigma = bit_split(jnp.broadcast_to(g, (n, 5)), u, split)
    mean = jnp.mean(_value(hi, lo, sigma), axis=0)
    # Stratified uniforms integrate a step function to within 1/n of a
    # grid step 1/sigma.
    tol = 1.0 / (n * float(sigma)) + 1e-6
    close = jnp.abs(mean - g) <= tol
    assert bool(close[1:].all()) if biased else bool(close.all())
    assert bool(close[0]) != biased


def test_special_values():
  hi, lo, sigma = bit_split(jnp.zeros((2, 4)), jnp.zeros((2, 4)))
  assert float(sigma) == 1.0 and not hi.any() and not lo.any()
  g = jnp.array([[1.0, jnp.nan], [2.0, 3.0]])
  hi, lo, sigma = bit_split(g, jnp.zeros((2, 2)))
  assert bool(jnp.isnan(sigma)) and not hi.any() and not lo.any()
  assert bool(jnp.isnan(split_sigma(jnp.array([jnp.inf, 1.0]))))


def test_unknown_split_is_rejected():
  with raises("split must be one of"):
    bit_split(jnp.ones(2), jnp.zeros(2), "half")
