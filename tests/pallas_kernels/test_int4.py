"""INT4 nibble packing: hand-computed bytes, round trips, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.int4 import pack_int4, packed_shape, unpack_int4
from tests.helpers import raises, rng


def test_packs_even_element_into_the_low_nibble():
  codes = jnp.array([[0, 1, -1, 7, -8, 3]], jnp.int8)
  # (0 | 1 << 4), (0xF | 7 << 4), (0x8 | 3 << 4)
  assert pack_int4(codes).tolist() == [[0x10, 0x7F, 0x38]]


def test_matches_jnp_int4_memory_layout():
  # jnp.int4 arrays are stored two per byte, even element low: our bytes
  # are that layout (what CUTLASS's int4b_t and the GPU kernels read).
  codes = rng("layout").integers(-8, 8, size=(4, 16)).astype(np.int8)
  ours = np.asarray(pack_int4(jnp.asarray(codes)))
  low, high = codes[:, 0::2] & 0xF, (codes[:, 1::2] & 0xF) << 4
  np.testing.assert_array_equal(ours, (low | high).astype(np.uint8))


@pytest.mark.parametrize("shape", [(2,), (1, 2), (3, 6), (5, 34), (2, 3, 130)])
def test_round_trip_over_every_code_and_ragged_shapes(shape):
  codes = rng("trip", shape).integers(-8, 8, size=shape).astype(np.int8)
  codes.reshape(-1)[:16] = np.arange(-8, 8)[: codes.size]
  packed = pack_int4(jnp.asarray(codes))
  assert packed.shape == packed_shape(shape) and packed.dtype == jnp.uint8
  np.testing.assert_array_equal(unpack_int4(packed), codes)


def test_round_trip_under_jit():
  codes = jnp.asarray(rng("jit").integers(-8, 8, size=(8, 10)), jnp.int8)
  out = jax.jit(lambda c: unpack_int4(pack_int4(c)))(codes)
  np.testing.assert_array_equal(out, codes)


def test_odd_last_axis_is_rejected():
  with raises(r"must be even; got shape \(3, 5\)"):
    pack_int4(jnp.zeros((3, 5), jnp.int8))


def test_out_of_range_codes_are_rejected():
  with raises(r"\[-8, 7\].*\[-9, 7\]"):
    pack_int4(jnp.array([[-9, 7]], jnp.int8))


def test_wrong_dtypes_are_rejected():
  with raises("codes has shape .* float32; expected an array of int8"):
    pack_int4(jnp.zeros((2, 4), jnp.float32))
  with raises("packed has shape .* int8; expected an array of uint8"):
    unpack_int4(jnp.zeros((2, 4), jnp.int8))
