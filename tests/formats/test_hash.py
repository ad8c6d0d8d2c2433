"""The counter-based hash behind stochastic rounding.

Statistical thresholds are 5 standard deviations (false-alarm rate ~6e-7 per
check) computed from the sample size, so a correct hash passes and a
structured one (e.g. a plain xor of seed and index) fails.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import derive_seed, random_bits, uniform_from_bits

N_ROWS, N_COLS = 256, 256  # 65536 samples


def _bits(seed):
  row = jnp.arange(N_ROWS, dtype=jnp.uint32)[:, None]
  col = jnp.arange(N_COLS, dtype=jnp.uint32)[None, :]
  return random_bits(seed, row, col)


def _grid(seed):
  return np.asarray(_bits(jnp.uint32(seed)))


def test_same_inputs_same_bits_and_jit_agrees():
  np.testing.assert_array_equal(_grid(7), _grid(7))
  jitted = jax.jit(_bits)(jnp.uint32(7))
  np.testing.assert_array_equal(_grid(7), np.asarray(jitted))


def test_seeds_rows_and_cols_all_matter():
  a = _grid(1)
  assert (a != _grid(2)).mean() > 0.99
  assert len(np.unique(a)) > 0.99 * a.size  # no repeats along rows/cols


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1])
def test_uniform_mean_and_histogram(seed):
  u = np.asarray(uniform_from_bits(jnp.asarray(_grid(seed)))).ravel()
  n = u.size
  assert 0.0 <= u.min() and u.max() <= 1 - 2**-24
  assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
  bins = 64
  counts = np.histogram(u, bins=bins, range=(0, 1))[0]
  chi2 = float(((counts - n / bins) ** 2 / (n / bins)).sum())
  df = bins - 1
  # Wilson-Hilferty upper quantile of chi^2(df) at z = 5.
  crit = df * (1 - 2 / (9 * df) + 5 * np.sqrt(2 / (9 * df))) ** 3
  assert chi2 < crit


def test_every_bit_is_balanced():
  bits = _grid(3).ravel()
  n = bits.size
  for k in range(32):
    frac = ((bits >> k) & 1).mean()
    assert abs(frac - 0.5) < 5 * 0.5 / np.sqrt(n), k


def test_neighbours_and_seeds_are_uncorrelated():
  u = np.asarray(uniform_from_bits(jnp.asarray(_grid(11))))
  v = np.asarray(uniform_from_bits(jnp.asarray(_grid(12))))
  bound = 5 / np.sqrt(u.size)
  for a, b in (
    (u[:, :-1], u[:, 1:]),  # along a row
    (u[:-1, :], u[1:, :]),  # along a column
    (u, v),  # consecutive seeds
    (u[:, : N_COLS // 2], u[:, N_COLS // 2 :]),
  ):
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < bound


def test_derived_seeds_are_distinct():
  seeds = [int(derive_seed(jnp.uint32(5), salt)) for salt in range(1, 64)]
  assert len(set(seeds)) == len(seeds)
  assert int(derive_seed(jnp.uint32(5), 1)) != int(
    derive_seed(jnp.uint32(6), 1)
  )
