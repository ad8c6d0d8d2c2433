"""The Hadamard quantizer: rotation error, the per-layer block search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Int4, fake_quantize
from lowprec_jax.formats._hadamard import (
  choose_hadamard_block,
  hadamard_candidates,
  hadamard_quantize,
  rotation_error,
  switch_on_block,
)
from pallas_kernels.hadamard import block_hadamard
from tests.helpers import normal, raises


def outlier_activations(seed: int = 0, tokens: int = 256, k: int = 256):
  """Gaussian activations with a few channels 30x larger (the outlier
  channels of transformer activations)."""
  x = normal((tokens, k), seed=seed)
  return x.at[:, 7].mul(30.0).at[:, 100].mul(-20.0).at[:, 201].mul(25.0)


def test_candidates_divide_k():
  assert hadamard_candidates(96) == (1, 2, 4, 8, 16, 32)
  assert hadamard_candidates(1024) == tuple(2**i for i in range(11))
  assert hadamard_candidates(96, (64, 128)) == ()


def test_rotation_error_is_measured_in_the_rotated_domain():
  # ||Q(xH) H^T - x|| = ||Q(xH) - xH|| because H is orthogonal.
  x = outlier_activations(1)
  rotated = block_hadamard(x, 64)
  back = block_hadamard(fake_quantize(rotated, Int4.per_tensor()), 64)
  np.testing.assert_allclose(
    rotation_error(x, 64), jnp.linalg.norm(back - x), rtol=1e-5
  )


@pytest.mark.parametrize("fmt", [Int4.per_tensor(), Int4.groups(32)])
def test_rotation_lowers_the_error_on_outlier_channels(fmt):
  x = outlier_activations(2)
  plain = jnp.sum((fake_quantize(x, fmt) - x) ** 2)
  rotated = block_hadamard(x, 128)
  hq = jnp.sum((hadamard_quantize(x, 128, fmt).dequantize() - rotated) ** 2)
  assert float(hq) < 0.5 * float(plain)


def test_search_picks_a_large_block_for_outliers_and_1_without():
  w = normal((64, 256), seed=3) * 0.05
  index, errors, candidates = choose_hadamard_block(outlier_activations(3), w)
  assert errors.shape == (len(candidates),)
  assert candidates[int(index)] >= 32
  assert float(errors[int(index)]) == float(errors.min())
  # Uniform data has no outliers to spread: the rotation only adds work,
  # and the search keeps a small block (rotating uniform data makes it
  # Gaussian, whose per-tensor absmax grid is coarser).
  uniform = jax.random.uniform(jax.random.key(0), (256, 256), minval=-1.0)
  index, _, candidates = choose_hadamard_block(uniform, uniform)
  assert candidates[int(index)] == 1


def test_search_runs_under_jit_and_switch_picks_the_branch():
  x, w = outlier_activations(4), normal((64, 256), seed=5)
  index = jax.jit(lambda a, b: choose_hadamard_block(a, b)[0])(x, w)
  candidates = hadamard_candidates(256)
  got = jax.jit(
    lambda i, v: switch_on_block(
      i, candidates, lambda b, u: block_hadamard(u, b), v
    )
  )(index, x)
  np.testing.assert_array_equal(got, block_hadamard(x, candidates[int(index)]))


def test_bad_input():
  with raises("must share the contraction size"):
    choose_hadamard_block(jnp.ones((4, 8)), jnp.ones((4, 16)))
  with raises("no candidate block divides the contraction size 6"):
    choose_hadamard_block(jnp.ones((4, 6)), jnp.ones((4, 6)), candidates=(4,))
  with raises("x has shape"):
    choose_hadamard_block(jnp.ones((4, 8), jnp.int32), jnp.ones((4, 8)))
  with raises("block=16 must divide the contraction size 24"):
    hadamard_quantize(jnp.ones((2, 24)), 16)
