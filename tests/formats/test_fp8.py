"""FP8 (E4M3, E5M2) quantization with per-tensor, row, 1xG and BxB scales."""

import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Fp8, quantize, scale_shape
from tests.helpers import fp8_ulp, normal

FORMATS = [
  Fp8.per_tensor("e4m3"),
  Fp8.per_tensor("e5m2"),
  Fp8.per_row("e4m3"),
  Fp8.per_row("e5m2"),
  Fp8.groups(128, "e4m3"),
  Fp8.groups(16, "e4m3"),
  Fp8.blocks(128, "e4m3"),
  Fp8.blocks(32, "e5m2"),
  Fp8.groups(16, "e4m3", "bfloat16"),
  Fp8("e5m2", (1, None), "bfloat16"),
]


def test_e4m3_codes_by_hand():
  # absmax 448 = E4M3 max -> scale 1. 0.3 lies between 0.28125 and 0.3125
  # (spacing 2^-5 in [0.25, 0.5)) -> 0.3125; 17 is a tie between 16 and 18
  # -> even mantissa 16; 0.0009765625 = 2^-10 is subnormal (step 2^-9) -> 0.
  x = jnp.array([[448.0, 1.0, 0.3, -17.0, 2.0**-10, 3 * 2.0**-9]])
  qt = quantize(x, Fp8.per_tensor("e4m3"))
  assert qt.scale.tolist() == [[1.0]]
  codes = qt.qvalue.astype(jnp.float32).tolist()[0]
  assert codes == [448.0, 1.0, 0.3125, -16.0, 0.0, 3 * 2.0**-9]


def test_e5m2_codes_by_hand():
  # absmax 57344 = E5M2 max -> scale 1. 0.3 -> spacing 2^-4 in [0.25, 0.5):
  # 0.3125 (0.3 is nearer 0.3125 than 0.25); 10 -> spacing 2 -> tie 8/10/12:
  # 10 is exactly representable; 11 ties 10 and 12 -> even mantissa 12.
  x = jnp.array([[57344.0, 0.3, 10.0, -11.0]])
  qt = quantize(x, Fp8.per_tensor("e5m2"))
  codes = qt.qvalue.astype(jnp.float32).tolist()[0]
  assert codes == [57344.0, 0.3125, 10.0, -12.0]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("shape", [(1, 1), (70, 45), (130, 260), (3, 33, 40)])
def test_scale_shapes_and_storage(fmt, shape):
  qt = quantize(normal(shape), fmt)
  assert qt.qvalue.dtype == fmt.storage_dtype and qt.qvalue.shape == shape
  assert qt.scale.shape == scale_shape(shape, fmt.tile)
  assert qt.scale.dtype == fmt.scale_dtype
  qt.validate()


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_error_at_most_half_an_fp8_step(fmt, dtype, seed):
  """|x - q s| <= ulp_fp8(|x|/s) * s / 2 per element (RTN).

  The FP8 spacing is computed independently in numpy from the element's
  binade (subnormals included); fp32 rounding of x/s and q*s adds at most
  |x| 2^-22.
  """
  shape = (70, 300)
  x = normal(shape, dtype, seed=seed, scale=5.0)
  qt = quantize(x, fmt)
  xf = np.asarray(x.astype(jnp.float32), np.float64)
  s = np.asarray(qt.scale.astype(jnp.float32), np.float64)
  s = _expand(s, fmt.tile, shape)
  err = np.abs(np.asarray(qt.dequantize(jnp.float32), np.float64) - xf)
  bound = fp8_ulp(xf / s, fmt.storage_dtype) * s / 2 + np.abs(xf) * 2.0**-22
  assert np.all(err <= bound)


def _expand(scale, tile, shape):
  if tile is None:
    return np.broadcast_to(scale, shape)
  tr = shape[-2] if tile[0] is None else tile[0]
  tc = shape[-1] if tile[1] is None else tile[1]
  full = np.repeat(np.repeat(scale, tr, axis=-2), tc, axis=-1)
  return full[..., : shape[-2], : shape[-1]]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_transpose_maps_tiles(fmt):
  """quantize(x^T, F^T) == quantize(x, F).mT for every tile."""
  x = normal((96, 160), seed=7)
  direct = quantize(x.T, fmt.transpose())
  via = quantize(x, fmt).mT
  np.testing.assert_array_equal(
    direct.qvalue.astype(jnp.float32), via.qvalue.astype(jnp.float32)
  )
  np.testing.assert_array_equal(
    direct.scale.astype(jnp.float32), via.scale.astype(jnp.float32)
  )
  assert via.format == fmt.transpose()
  assert fmt.transpose().transpose() == fmt


def test_names():
  assert Fp8.per_tensor().name == "e4m3_tensor"
  assert Fp8.per_row("e5m2").name == "e5m2_row"
  assert Fp8.groups(128).name == "e4m3_1x128"
  assert Fp8.groups(128).transpose().name == "e4m3_128x1"
  assert Fp8.blocks(128).name == "e4m3_128x128"
  assert Fp8.groups(16, scale_storage="bfloat16").name == "e4m3_1x16_bf16scale"


@pytest.mark.parametrize("seed", range(3))
def test_bf16_scales_are_rounded_up_before_the_codes_are_computed(seed):
  """bf16 storage: the stored scale is the smallest bf16 >= absmax / fmax, and
  the codes are exactly those of an fp32-scaled quantization with that scale,
  so dequantizing from the stored bf16 scale is exact (no COAT-style drift)."""
  x = normal((32, 64), seed=seed, scale=3.0)
  fmt = Fp8.groups(16, "e4m3", "bfloat16")
  qt = quantize(x, fmt)
  absmax = np.abs(np.asarray(x)).reshape(32, 4, 16).max(-1)
  exact = absmax.astype(np.float32) * np.float32(1 / 448)  # as quantize does
  stored = np.asarray(qt.scale.astype(jnp.float32))
  assert np.all(stored >= exact)
  below = np.asarray(
    jnp.nextafter(qt.scale, jnp.bfloat16(0)).astype(jnp.float32)
  )
  assert np.all(below < exact)
  # quantize multiplies by the fp32 reciprocal of the scale
  y = np.asarray(x) * np.repeat(np.float32(1) / stored, 16, axis=1)
  want = np.asarray(jnp.asarray(y, jnp.float32).astype(jnp.float8_e4m3fn))
  np.testing.assert_array_equal(
    np.asarray(qt.qvalue).astype(np.float32), want.astype(np.float32)
  )


@pytest.mark.parametrize(
  "make",
  [
    lambda: Fp8("e3m4"),
    lambda: Fp8.groups(100),
    lambda: Fp8.groups(8),
    lambda: Fp8.blocks(48),
    lambda: Fp8("e4m3", (2, 128)),
    lambda: Fp8("e4m3", (None, None)),
    lambda: Fp8("e4m3", (4, None)),
    lambda: Fp8("e4m3", [1, 128]),
    lambda: Fp8("e4m3", None, "float16"),
  ],
)
def test_invalid_formats_raise(make):
  with pytest.raises(ValueError, match="Fp8"):
    make()


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_eager_and_jit_give_the_same_bits(fmt):
  """The scale is ``absmax * RN(1/qmax)`` in both modes (XLA turns a
  division by a constant into that product under jit only)."""
  import jax

  for seed in range(4):
    x = normal((40, 300), seed=seed, scale=3.7)
    eager, jitted = (
      quantize(x, fmt),
      jax.jit(quantize, static_argnums=1)(x, fmt),
    )
    np.testing.assert_array_equal(
      eager.scale.astype(jnp.float32), jitted.scale.astype(jnp.float32)
    )
    np.testing.assert_array_equal(
      eager.qvalue.astype(jnp.float32), jitted.qvalue.astype(jnp.float32)
    )
