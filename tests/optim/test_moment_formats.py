"""Moment formats: FP8 with dynamic range expansion, codebooks, layouts."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.optim import Codebook, Fp8Dre, moment_nbytes, quantize_moment
from lowprec_jax.optim._codebooks import dynamic_map, linear_nonzero_map
from lowprec_jax.optim._moment_formats import GroupLayout
from tests.helpers import fp8_ulp, rng

FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
FP8_DTYPE = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}
SHAPES = [(3, 256), (2, 3, 128), (5, 37), (300,), ()]
DRE_FORMATS = [
  Fp8Dre(dtype="e4m3"),
  Fp8Dre(dtype="e5m2"),
  Fp8Dre(dtype="e4m3", group=32),
  Fp8Dre(dtype="e4m3", compact=True),
]
CODEBOOKS = [
  Codebook(bits=8, signed=True, group=256),
  Codebook(bits=8, signed=False, group=128),
  Codebook(bits=4, signed=True, group=128),
  Codebook(bits=4, map="linear", signed=False, group=64),
]


def moment_like(shape, *, seed=0, second=False, sigma=1.0, steps=60):
  """EMA moments of gradients whose per-element scales span decades."""
  gen = rng("moments", shape, seed)
  scale = np.exp(gen.normal(0.0, sigma, shape))
  m, v = np.zeros(shape), np.zeros(shape)
  for _ in range(steps):
    g = scale * gen.standard_normal(shape)
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
  return jnp.asarray(v if second else m, jnp.float32)


def _groups(x, group) -> np.ndarray:
  """x (float64) as (groups, group), zero-padded like the flat layout."""
  flat = np.asarray(x, np.float64).reshape(-1)
  pad = -flat.size % group
  return np.pad(flat, (0, pad)).reshape(-1, group)


# ------------------------------------------------------------ fp8 + DRE ----


def _dre_k(amax, amin, fmax) -> np.ndarray:
  """COAT's k, independently in float64 (1/16 grid, clipped)."""
  steps = 16 * np.log2(fmax**2 / 2) / np.log2(amax / amin)
  return np.clip(np.floor(steps), 1, 2**20) / 16


@pytest.mark.parametrize("fmt", DRE_FORMATS, ids=repr)
@pytest.mark.parametrize("second", [False, True])
def test_dre_k_and_centre_follow_coat(fmt, second):
  """k = floor(16 log2(fmax^2/2) / log2(max/min)) / 16, c = sqrt(max min).

  Faithful stats are compared with float64 recomputations; log2 in fp32 can
  move 16 L / log2 R across an integer only within ~1e-6 of it, so k is
  allowed to differ by one step exactly there.
  """
  x = moment_like((4, 512), second=second)
  q = quantize_moment(x, fmt)
  a = np.abs(_groups(x, fmt.group))
  amax, amin = a.max(1), np.where(a > 0, a, np.inf).min(1)
  if fmt.compact:
    stored_max = np.asarray(q.stats["max"], np.float64).reshape(-1)
    stored_min = np.asarray(q.stats["min"], np.float64).reshape(-1)
    # Rounded outward to bfloat16 (8 significant bits): never inside.
    assert np.all(stored_max >= amax) and np.all(
      stored_max <= amax * 2**-7 + amax
    )
    assert np.all(stored_min <= amin) and np.all(
      stored_min >= amin * (1 - 2**-7)
    )
    return
  fmax = FP8_MAX[fmt.dtype]
  k = np.asarray(q.stats["k"], np.float64).reshape(-1)
  assert np.all(k * 16 == np.round(k * 16))  # on the 1/16 grid
  expected = _dre_k(amax, amin, fmax)
  steps = 16 * np.log2(fmax**2 / 2) / np.log2(amax / amin)
  near_integer = np.abs(steps - np.round(steps)) < 1e-4
  assert np.all((k == expected) | near_integer), (k, expected)
  assert np.all((amax / amin) ** k <= fmax**2 / 2 * (1 + 1e-5))
  centre = np.asarray(q.stats["centre"], np.float64).reshape(-1)
  np.testing.assert_allclose(centre, np.sqrt(amax * amin), rtol=3e-7)


@pytest.mark.parametrize("fmt", DRE_FORMATS[:3], ids=repr)
@pytest.mark.parametrize("shape", [(3, 256), (5, 37)])
def test_dre_round_trip_within_derived_bound(fmt, shape):
  """|x'/x - 1| <= max((1+d)^(1/k) - 1, 1 - (1-d)^(1/k)) + 1e-5 per element.

  q = fp8(y/s) rounds r = y/s to nearest: q = r(1 + e), |e| <= d =
  ulp(r)/(2r) (ulp on the fp8 grid, subnormals included; computed in
  numpy). Decoding takes the k-th root, x' = x (1 + e)^(1/k). The fp32
  log2/exp2 chain adds a few ulp on exponents <= 17 in magnitude (< 1e-5).
  """
  x = jnp.asarray(rng("dre", shape, fmt).standard_normal(shape), jnp.float32)
  x = x * jnp.exp(2 * x)  # magnitudes over ~5 decades
  q = quantize_moment(x, fmt)
  got = _groups(q.dequantize(), fmt.group)
  want = _groups(x, fmt.group)
  s, k, c = (
    np.asarray(q.stats[n], np.float64).reshape(-1, 1)
    for n in ("scale", "k", "centre")
  )
  r = (np.abs(want) / c) ** k / s
  d = fp8_ulp(np.minimum(r, FP8_MAX[fmt.dtype]), FP8_DTYPE[fmt.dtype]) / (
    2 * np.where(r > 0, r, 1)
  )
  bound = np.maximum((1 + d) ** (1 / k) - 1, 1 - (1 - d) ** (1 / k)) + 1e-5
  err = np.abs(got - want)
  assert np.all(err <= bound * np.abs(want)), np.max(err / (bound * abs(want)))


@pytest.mark.parametrize("dtype", ["e4m3", "e5m2"])
def test_plain_per_group_fp8_within_half_step(dtype):
  """Without expansion: |x - q s| <= ulp(|x|/s) s / 2 + |x| 2^-22."""
  fmt = Fp8Dre(dtype=dtype, expand=False)
  x = moment_like((4, 256))
  q = quantize_moment(x, fmt)
  s = np.asarray(q.stats["scale"], np.float64).reshape(-1, 1)
  want = _groups(x, 128)
  bound = fp8_ulp(np.abs(want) / s, FP8_DTYPE[dtype]) * s / 2
  err = np.abs(_groups(q.dequantize(), 128) - want)
  assert np.all(err <= bound + np.abs(want) * 2**-22)


def _rel_rms(got, want) -> float:
  return float(jnp.sqrt(jnp.mean(((got - want) / want) ** 2)))


@pytest.mark.parametrize("dtype, gain", [("e4m3", 3.0), ("e5m2", 6.0)])
def test_dre_divides_relative_error_by_about_k(dtype, gain):
  """Groups with magnitudes log-uniform in [1, 10] get k = 5 (E4M3) or 9.3
  (E5M2); decoding takes the k-th root, which divides the fp8 relative
  error by k, less what the smallest elements lose near 2/fmax. Measured
  RMS relative error ratios: 3.4 (E4M3), 8.6 (E5M2)."""
  gen = rng("dre-gain", dtype)
  x = np.exp(np.log(10) * gen.uniform(0, 1, (64, 128)))
  x = jnp.asarray(x * np.sign(gen.standard_normal(x.shape)), jnp.float32)
  plain = quantize_moment(x, Fp8Dre(dtype=dtype, expand=False)).dequantize()
  dre = quantize_moment(x, Fp8Dre(dtype=dtype)).dequantize()
  assert _rel_rms(plain, x) > gain * _rel_rms(dre, x)


def test_dre_keeps_small_second_moments_off_zero():
  """Plain per-group E4M3 flushes elements below max / (448 * 1024) to zero;
  a zero v turns m / (sqrt(v) + eps) into m / eps. Expansion maps every
  non-zero element to at least 2/fmax, so none is lost, and the MSE of
  m / sqrt(v) drops by orders of magnitude on moment-like data (measured:
  ~1e8 -> ~1e-4; scales log-normal with sigma 1.5)."""
  m = moment_like((16, 512), sigma=1.5)
  v = moment_like((16, 512), sigma=1.5, second=True)
  plain, dre = Fp8Dre(expand=False), Fp8Dre()
  qdq = lambda x, fmt: quantize_moment(x, fmt).dequantize()  # noqa: E731
  assert np.any(np.asarray(qdq(v, plain)) == 0)
  assert np.all(np.asarray(qdq(v, dre)) > 0)
  ratio = lambda a, b: a / (jnp.sqrt(b) + 1e-8)  # noqa: E731
  mse = lambda fmt: float(  # noqa: E731
    jnp.mean((ratio(qdq(m, fmt), qdq(v, fmt)) - ratio(m, v)) ** 2)
  )
  assert mse(dre) * 1e6 < mse(plain)


@pytest.mark.parametrize("fmt", DRE_FORMATS, ids=repr)
def test_dre_zero_and_constant_groups_round_trip_exactly(fmt):
  """All-zero group: codes 0, finite stats. Equal magnitudes (zeros and
  signs mixed): k = 1, c = M, q = ±fmax, decoded exactly as ±M."""
  g = fmt.group
  zero = np.zeros(g)
  const = np.where(np.arange(g) % 3 == 0, 0.0, 3.7e-9)
  const = np.where(np.arange(g) % 2 == 0, -const, const)
  x = jnp.asarray(np.stack([zero, const, -const * 1e20]), jnp.float32)
  q = quantize_moment(x, fmt)
  for stat in q.stats.values():
    assert np.all(np.isfinite(np.asarray(stat, np.float32)))
  want = np.asarray(x)
  if fmt.compact:  # the stored max is M rounded up to bfloat16
    want = np.asarray(jnp.asarray(np.abs(want)), np.float32)
    up = np.asarray(q.stats["max"], np.float32)
    want = np.sign(np.asarray(x)) * up
  assert np.array_equal(np.asarray(q.dequantize()), want)
  assert not np.asarray(q.codes[0].astype(jnp.float32)).any()


def test_zeros_are_excluded_from_the_minimum():
  """A group of zeros and values in [1, 2]: R = 2, so k = 265/16."""
  x = np.zeros(128)
  x[:64] = np.linspace(1.0, 2.0, 64)
  q = quantize_moment(jnp.asarray(x, jnp.float32)[None], Fp8Dre())
  assert (
    float(q.stats["k"][0, 0]) == math.floor(16 * math.log2(448**2 / 2)) / 16
  )
  assert float(q.stats["centre"][0, 0]) == np.float32(np.sqrt(2.0))
  # The smallest element lands near 2/448, where E4M3 spacing is 2^-9:
  # relative error <= 2^-10 / (2/448) = 0.22 before the k-th root.
  np.testing.assert_allclose(q.dequantize()[0], x, rtol=0.22 / 16)


def test_e5m2_targets_its_own_range():
  """For E5M2 the target ratio is 57344^2/2: k = floor(16 * 30.61) / 16."""
  x = jnp.asarray(np.linspace(1.0, 2.0, 128), jnp.float32)[None]
  q = quantize_moment(x, Fp8Dre(dtype="e5m2"))
  assert (
    float(q.stats["k"][0, 0]) == math.floor(16 * math.log2(57344**2 / 2)) / 16
  )
  assert q.codes.dtype == jnp.float8_e5m2


def test_compact_equals_faithful_when_extremes_are_bfloat16():
  """k, c, s are recomputed from the stored (max, min); when those are exact
  in bfloat16, compact and faithful decode to the same bits."""
  x = moment_like((4, 256))
  a = np.abs(_groups(x, 128))
  # Snap each group's max and min to bfloat16 values (keeping sign).
  x = np.asarray(x, np.float32).reshape(-1, 128).copy()
  for row, mag in zip(x, a):
    for idx in (mag.argmax(), np.where(mag > 0, mag, np.inf).argmin()):
      row[idx] = np.float32(jnp.asarray(row[idx]).astype(jnp.bfloat16))
  x = jnp.asarray(x.reshape(4, 256))
  faithful = quantize_moment(x, Fp8Dre()).dequantize()
  compact = quantize_moment(x, Fp8Dre(compact=True)).dequantize()
  assert np.array_equal(np.asarray(faithful), np.asarray(compact))


# ------------------------------------------------------------ codebooks ----


def test_dynamic_maps_have_their_defined_structure():
  signed8, unsigned8 = (
    np.array(dynamic_map(8, True)),
    np.array(dynamic_map(8, False)),
  )
  assert signed8.size == unsigned8.size == 256
  # 127 magnitudes per sign, 0 and +1; decades 10^0 .. 10^-6.
  assert np.sum(signed8 > 0) == 128 and np.sum(signed8 < 0) == 127
  assert signed8.max() == 1.0 and 0.0 in signed8
  np.testing.assert_allclose(
    np.sort(np.abs(signed8[signed8 != 0]))[0], 1e-6 * 0.55, rtol=1e-6
  )
  # The top decade has 64 (signed) / 128 (unsigned) equal bins of [0.1, 1].
  top = np.sort(signed8[(signed8 > 0.1) & (signed8 < 1)])
  assert top.size == 64 and np.allclose(np.diff(top), 0.9 / 64)
  assert np.sum((unsigned8 > 0.1) & (unsigned8 < 1)) == 128
  assert unsigned8.min() == 0.0
  assert len(dynamic_map(4, True)) == 16
  assert linear_nonzero_map(4) == tuple(j / 16 for j in range(1, 17))


@pytest.mark.parametrize("fmt", CODEBOOKS, ids=repr)
@pytest.mark.parametrize("shape", [(2, 3, 128), (5, 37)])
def test_codebook_picks_the_nearest_code(fmt, shape):
  """|codebook[i] - x/A| is minimal over the codebook (float64 brute force;
  x/A and the midpoints are fp32, so ties may go either way within 2^-22),
  and x' = codebook[i] A in fp32."""
  x = moment_like(shape, second=not fmt.signed)
  q = quantize_moment(x, fmt)
  absmax = np.asarray(q.stats["absmax"], np.float64).reshape(-1, 1)
  n = _groups(x, fmt.group) / np.where(absmax > 0, absmax, 1)
  codes = np.array(fmt.values(), np.float64)
  real = _groups(np.ones(shape), fmt.group) > 0  # not zero padding
  decoded = _groups(q.dequantize(), fmt.group)
  got = decoded / np.where(absmax > 0, absmax, 1)
  best = np.min(np.abs(n[..., None] - codes), axis=-1)
  assert np.all((np.abs(got - n) <= best + 2**-22)[real])
  exact = np.float32(codes)[None, None, :] * np.float32(absmax)[:, :, None]
  assert np.all(np.any(decoded[..., None] == exact, axis=-1)[real])


def test_four_bit_packing_is_a_bijection():
  """Byte j of a group holds element j (low) and j + G/2 (high)."""
  fmt = Codebook(bits=4, group=32)
  values = np.array(fmt.values(), np.float32)
  lo, hi = np.meshgrid(np.arange(16), np.arange(16))
  idx = np.stack([lo.reshape(-1), hi.reshape(-1)])  # every pair of codes
  pairs = values[idx].reshape(2, 16, 16).transpose(1, 0, 2).reshape(16, 32)
  x = jnp.asarray(pairs * 3.0)
  q = quantize_moment(x, fmt)
  assert q.codes.shape == (16, 16) and q.codes.dtype == jnp.uint8
  assert np.array_equal(np.asarray(q.dequantize()), np.asarray(x))
  packed = np.asarray(q.codes)[0]
  assert np.array_equal(values[packed & 15], pairs[0, :16])
  assert np.array_equal(values[packed >> 4], pairs[0, 16:])


def test_linear_map_never_decodes_a_second_moment_to_zero():
  fmt = Codebook(bits=4, map="linear", signed=False, group=128)
  v = moment_like((4, 256), second=True)
  v = v.at[0, :5].set(0.0)
  q = quantize_moment(v, fmt)
  absmax = np.asarray(q.stats["absmax"]).reshape(-1, 1)
  assert np.all(_groups(q.dequantize(), 128) >= absmax / 16)


def test_all_zero_codebook_group_round_trips():
  for fmt in CODEBOOKS:
    q = quantize_moment(jnp.zeros((2, fmt.group)), fmt)
    assert not np.asarray(q.dequantize()).any() and not q.stats["absmax"].any()


# --------------------------------------------------------- layout, bytes ----


@pytest.mark.parametrize("shape", SHAPES)
def test_layout_shapes(shape):
  layout = GroupLayout(shape, 128)
  q = quantize_moment(jnp.ones(shape), Fp8Dre())
  q4 = quantize_moment(jnp.ones(shape), Codebook(bits=4, group=128))
  if shape and shape[-1] % 128 == 0:  # aligned: the parameter's own shape
    assert q.codes.shape == shape and q4.codes.shape == shape[:-1] + (
      shape[-1] // 2,
    )
    assert q.stats["k"].shape == shape[:-1] + (shape[-1] // 128,)
  else:
    groups = -(-math.prod(shape) // 128)
    assert q.codes.shape == (groups, 128) and q4.codes.shape == (groups, 64)
  assert layout.stats_shape() == q.stats["scale"].shape
  assert q.dequantize().shape == shape


@pytest.mark.parametrize(
  "fmt, per_element",
  [
    (Fp8Dre(), 1 + 3 * 4 / 128),
    (Fp8Dre(compact=True), 1 + 2 * 2 / 128),
    (Fp8Dre(expand=False), 1 + 4 / 128),
    (Codebook(bits=8, group=256), 1 + 4 / 256),
    (Codebook(bits=4, group=128), 0.5 + 4 / 128),
  ],
  ids=repr,
)
def test_moment_bytes_are_exact(fmt, per_element):
  for shape in [(64, 1024), (5, 37)]:
    q = quantize_moment(jnp.ones(shape), fmt)
    actual = sum(x.nbytes for x in (q.codes, *q.stats.values()))
    assert moment_nbytes(shape, fmt) == actual
  assert moment_nbytes((64, 1024), fmt) == 64 * 1024 * per_element


# ----------------------------------------------------------- bad input ----


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: Fp8Dre(dtype="e3m4"), "dtype must be one of"),
    (lambda: Fp8Dre(group=100), "group must be a power of two"),
    (lambda: Fp8Dre(group=16), "group must be a power of two >= 32"),
    (lambda: Codebook(bits=3), "bits must be 4 or 8"),
    (lambda: Codebook(map="nf4"), "map must be 'dynamic' or 'linear'"),
    (lambda: Codebook(map="linear"), "use signed=False"),
  ],
)
def test_bad_formats_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_non_float_moment_raises_with_shape_and_dtype():
  with pytest.raises(ValueError, match=r"shape \(3, 4\) dtype int32"):
    quantize_moment(jnp.zeros((3, 4), jnp.int32), Fp8Dre())
