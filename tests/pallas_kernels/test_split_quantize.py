"""The bit-split kernel against its jnp twin: codes and row squares, bit for
bit (the kernel runs :func:`pallas_kernels.bit_split.bit_split` on its
tiles with uniforms hashed at the same global coordinates, and sums
integer squares exactly). Ragged shapes; both splits; NaN poisoning."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.bit_split import split_sigma
from pallas_kernels.split_quantize import (
  split_quantize,
  split_quantize_blocks,
  split_quantize_blocks_reference,
  split_quantize_reference,
)

CASES = [
  ((2, 40, 200), jnp.float32, "full"),
  ((1, 70, 128), jnp.bfloat16, "faithful"),
  ((1, 33, 17), jnp.float16, "full"),
]


@pytest.mark.parametrize("shape, dtype, split", CASES, ids=str)
@pytest.mark.parametrize("parts", [False, True])
def test_matches_the_reference(shape, dtype, split, parts):
  rng = np.random.default_rng(0)
  g = jnp.asarray(rng.standard_t(3, shape), dtype)
  sigma = split_sigma(g, split)
  out = split_quantize(g, sigma, 7, split=split, parts=parts)
  ref = split_quantize_reference(g, sigma, 7, split=split, parts=parts)
  out, ref = (out, ref) if parts else ((out,), (ref,))
  for a, b in zip(out, ref, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_gives_zero_codes():
  g = jnp.ones((1, 8, 32)).at[0, 1, 2].set(jnp.nan)
  sigma = split_sigma(g, "full")
  assert jnp.isnan(sigma)
  assert not np.asarray(
    split_quantize(g, sigma, 1, split="full", parts=False)
  ).any()


def test_bad_input():
  g = jnp.ones((1, 8, 32))
  with pytest.raises(ValueError, match="sigma has shape"):
    split_quantize(g, jnp.ones((2,)), 1, split="full", parts=False)
  with pytest.raises(ValueError, match="split must be one of"):
    split_quantize(g, jnp.float32(1.0), 1, split="half", parts=False)
  with pytest.raises(ValueError, match="g has shape"):
    split_quantize(g[0], jnp.float32(1.0), 1, split="full", parts=False)


@pytest.mark.parametrize(
  "shape, dtype, block",
  [((2, 40, 200), jnp.float32, 16), ((1, 70, 128), jnp.bfloat16, 32)],
  ids=str,
)
def test_blocks_match_the_reference(shape, dtype, block):
  """A sigma per block, from the block's maximum inside the kernel."""
  rng = np.random.default_rng(1)
  g = jnp.asarray(rng.standard_t(3, shape), dtype).at[0, 0, 0].set(1e4)
  c, sigma = split_quantize_blocks(g, 5, split="full", block=block)
  c_ref, sigma_ref = split_quantize_blocks_reference(
    g, 5, split="full", block=block
  )
  np.testing.assert_array_equal(np.asarray(c), np.asarray(c_ref))
  np.testing.assert_array_equal(np.asarray(sigma), np.asarray(sigma_ref))
  # The outlier's block alone has a small sigma; every block uses the range.
  assert float(sigma[0, 0, 0]) < 0.02 * float(jnp.median(sigma))
  assert int(jnp.abs(c[0, block:, block:]).max()) >= 100
