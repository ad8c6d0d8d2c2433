"""The moment formats' contract for non-finite and extreme values.

``pallas_kernels.moment_codecs`` (module docstring): statistics over the
finite elements only; ``inf``/``NaN`` stored as their own codes in a group
flagged by a negative first statistic (FP8: exact; codebooks: ``-inf`` is
stored as NaN); groups without them encoded exactly as before. Checked on
examples and, with hypothesis, as properties over shapes (0-d, 0-size,
ragged), input dtypes and magnitudes from 1e-30 to 1e30.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec_jax.optim import Fp8Dre, quantize_moment
from pallas_kernels import moment_codecs as mc
from tests.optim.test_moment_formats import (
  CODEBOOKS,
  DRE_FORMATS,
  _groups,
  moment_like,
)

FORMATS = DRE_FORMATS + [Fp8Dre(expand=False)] + CODEBOOKS
SPECIALS = (np.inf, -np.inf, np.nan)


def _decoded_special(fmt, value: float) -> float:
  """What a special element decodes to (-inf: NaN in a codebook)."""
  if np.isneginf(value) and not isinstance(fmt, Fp8Dre):
    return np.nan
  return value


def _first_stat(q) -> np.ndarray:
  return np.asarray(q.stats_tuple()[0], np.float32).reshape(-1)


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_specials_round_trip_and_touch_only_their_group(fmt):
  """Group 0 of a (4, 256) moment gets inf, -inf and NaN: they decode as
  documented, group 0 is flagged (negative first statistic) and its finite
  elements stay within 3x the format's usual worst error relative to the
  group's absmax (they give up the top codes), and every other group has
  the bits it has without the specials."""
  x = np.array(moment_like((4, 256), second=not fmt.signed))
  clean = x.copy()
  for col, value in zip((3, 5, 7), SPECIALS):
    x[0, col] = value
    clean[0, col] = 0.0
  q, q_clean = quantize_moment(x, fmt), quantize_moment(clean, fmt)
  got = np.asarray(q.dequantize())
  for col, value in zip((3, 5, 7), SPECIALS):
    np.testing.assert_equal(got[0, col], _decoded_special(fmt, value))
  flags = _first_stat(q) < 0
  assert flags[0] and not flags[1:].any()
  codes = _groups(np.asarray(q.codes, np.float32), fmt.code_width)
  codes_clean = _groups(np.asarray(q_clean.codes, np.float32), fmt.code_width)
  np.testing.assert_array_equal(codes[1:], codes_clean[1:])
  for name in q.stats:
    stat, stat_clean = (
      np.asarray(m.stats[name], np.float32).reshape(-1) for m in (q, q_clean)
    )
    np.testing.assert_array_equal(stat[1:], stat_clean[1:])
  finite = _groups(np.isfinite(x), fmt.group)[0] > 0
  want, have = _groups(clean, fmt.group)[0], _groups(got, fmt.group)[0]
  usual = np.max(np.abs(_groups(q_clean.dequantize(), fmt.group)[0] - want))
  absmax = np.max(np.abs(want))
  assert np.max(np.abs(have - want)[finite]) <= 3 * usual + 1e-6 * absmax


def test_fp8_flagged_group_reserves_only_the_top_code():
  """E4M3: the group's finite absmax maps to 416 (the value below 448),
  +inf and -inf to +-448, NaN to the NaN code."""
  fmt = Fp8Dre(expand=False)
  x = np.linspace(-1.0, 1.0, 128, dtype=np.float32)[None]
  x[0, :3] = SPECIALS
  q = quantize_moment(x, fmt)
  codes = np.asarray(q.codes.astype(jnp.float32))[0]
  assert list(codes[:2]) == [448.0, -448.0] and np.isnan(codes[2])
  assert np.max(np.abs(codes[3:])) == 416.0
  np.testing.assert_allclose(-_first_stat(q), 1.0 / 416.0, rtol=1e-7)


def test_all_special_group_and_huge_values():
  """A group of only non-finite values decodes to them; finite magnitudes
  up to 3e38 decode finite and within the format's error."""
  for fmt in FORMATS:
    x = np.full((1, fmt.group), np.inf, np.float32)
    np.testing.assert_equal(np.asarray(quantize_moment(x, fmt).dequantize()), x)
    y = np.full((1, fmt.group), 3e38, np.float32)
    y[0, 1] = 1e38
    got = np.asarray(quantize_moment(y, fmt).dequantize())
    assert np.all(np.isfinite(got)), fmt
    np.testing.assert_allclose(got[0, 0], 3e38, rtol=1e-2)


# --------------------------------------------------------------- properties --

SHAPES = [(), (1,), (0,), (0, 128), (5, 37), (3, 256), (2, 3, 128), (300,)]


@st.composite
def _moments(draw):
  fmt = draw(st.sampled_from(FORMATS))
  shape = draw(st.sampled_from(SHAPES))
  dtype = draw(st.sampled_from([np.float32, np.float16, jnp.bfloat16]))
  size = int(np.prod(shape))
  gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  centre = (
    draw(st.floats(-30, 30)) if dtype != np.float16 else draw(st.floats(-4, 4))
  )
  spread = draw(st.floats(0, 8))
  x = 10.0 ** (centre + spread * gen.uniform(-1, 1, size))
  x *= 1.0 if not fmt.signed else gen.choice([-1.0, 1.0], size)
  x[gen.uniform(size=size) < draw(st.floats(0, 0.3))] = 0.0
  n_special = draw(st.integers(0, min(size, 4)))
  for i in gen.choice(size, n_special, replace=False) if size else []:
    x[i] = gen.choice(SPECIALS) if fmt.signed else gen.choice([np.inf, np.nan])
  with np.errstate(over="ignore"):  # float16 overflow to inf is a case too
    return fmt, np.asarray(x.reshape(shape).astype(dtype))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(_moments())
def test_properties_over_shapes_dtypes_and_ranges(case):
  """For any moment: the decoded shape is the input's; specials decode as
  documented; finite elements decode finite, with their own sign (or 0),
  and no larger than their group's finite absmax (bfloat16 stats round it
  up by < 2^-7); a group is flagged iff it holds a non-finite element."""
  fmt, x = case
  q = quantize_moment(jnp.asarray(x), fmt)
  got = np.asarray(q.dequantize())
  assert got.shape == x.shape and got.dtype == np.float32
  x = np.asarray(x, np.float32)
  for value in SPECIALS:
    where = np.isnan(x) if np.isnan(value) else x == value
    if where.any():
      np.testing.assert_equal(got[where], _decoded_special(fmt, value))
  finite = np.isfinite(x)
  assert np.all(np.isfinite(got[finite]))
  assert np.all(np.sign(got[finite]) * np.sign(x[finite]) >= 0)
  groups = _groups(np.where(finite, x, 0), fmt.group)
  decoded = _groups(np.where(finite, got, 0), fmt.group)
  absmax = np.max(np.abs(groups), axis=-1, keepdims=True)
  assert np.all(np.abs(decoded) <= absmax * (1 + 2**-7) + 1e-38)
  flagged = np.any(_groups(~finite, fmt.group) > 0, axis=-1)
  np.testing.assert_array_equal(_first_stat(q) < 0, flagged)


# ------------------------------------------------------ finite outliers ----


@st.composite
def _outlier_groups(draw):
  rows, group = draw(st.sampled_from([(1, 32), (3, 128), (2, 256)]))
  gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  scale = 10.0 ** draw(st.floats(-30, 10))
  m = gen.standard_normal((rows, group)) * scale
  v = (m * m + scale * scale * gen.uniform(size=(rows, group))) * 1e-3
  v[gen.uniform(size=v.shape) < draw(st.floats(0, 0.5))] = 0.0
  for row in range(rows):  # an outlier 10^0 .. 10^24 above the rest, or none
    col = gen.integers(group)
    factor = 10.0 ** draw(st.floats(0, 24))
    m[row, col] *= np.sqrt(factor)
    v[row, col] = max(v[row, col], scale * scale * 1e-3) * factor
  if draw(st.booleans()):  # a non-finite element too
    v[0, gen.integers(group)] = gen.choice([np.inf, np.nan])
  with np.errstate(over="ignore"):
    return m.astype(np.float32), v.astype(np.float32)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(_outlier_groups())
def test_tame_outliers_saturates_only_a_huge_top_element(case):
  """``mc.tame_outliers`` on the two halves of each group: an element whose
  v exceeds OUTLIER_RATIO times the group's next largest finite v gets that
  v, and m scaled to keep m / sqrt(v) (fp32 rounding: < 1e-6 relative);
  every other element keeps its bits; the result is a fixed point."""
  m, v = case
  parts = lambda x: mc.split_parts(jnp.asarray(x))  # noqa: E731
  tm, tv = (np.concatenate(p, -1) for p in mc.tame_outliers(parts(m), parts(v)))
  fv = np.where(np.isfinite(v), v, 0)
  top = fv.max(-1, keepdims=True)
  below = np.where(fv < top, fv, 0).max(-1, keepdims=True)
  huge = (fv > mc.OUTLIER_RATIO * below) & (below >= mc.TINY)
  same = ~huge
  np.testing.assert_array_equal(
    tm[same].view(np.uint32), m[same].view(np.uint32)
  )
  np.testing.assert_array_equal(
    tv[same].view(np.uint32), v[same].view(np.uint32)
  )
  np.testing.assert_array_equal(tv[huge], np.broadcast_to(below, v.shape)[huge])
  ratio = m[huge] / np.sqrt(v[huge].astype(np.float64))
  np.testing.assert_allclose(
    tm[huge] / np.sqrt(tv[huge].astype(np.float64)), ratio, rtol=1e-6
  )
  again = mc.tame_outliers(parts(tm), parts(tv))
  np.testing.assert_array_equal(np.concatenate(again[1], -1), tv)
