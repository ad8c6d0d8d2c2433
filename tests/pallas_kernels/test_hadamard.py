"""The block Hadamard transform: known vectors, orthogonality, the GEMM identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.hadamard import (
  HADAMARD_BLOCKS,
  block_hadamard,
  butterflies,
  hadamard_matrix,
  normalisation,
)
from tests.helpers import F32_EPS, normal, raises


def test_known_vectors():
  # H_4 e_0 = (1, 1, 1, 1) / 2; H_2 (1, 1) = (sqrt 2, 0).
  e0 = jnp.array([1.0, 0.0, 0.0, 0.0])
  assert block_hadamard(e0, 4).tolist() == [0.5, 0.5, 0.5, 0.5]
  got = block_hadamard(jnp.array([3.0, 1.0, 2.0, -2.0]), 2)
  s = np.float32(1 / np.sqrt(2))
  np.testing.assert_allclose(got, [4 * s, 2 * s, 0.0, 4 * s], rtol=F32_EPS)


@pytest.mark.parametrize("block", HADAMARD_BLOCKS)
def test_matrix_is_orthogonal_and_symmetric(block):
  h = hadamard_matrix(block).astype(np.float64)
  np.testing.assert_array_equal(h, h.T)
  # Entries are +-1/sqrt(b) rounded to f32: H H^T = I to a few f32 ulps.
  np.testing.assert_allclose(h @ h.T, np.eye(block), atol=4 * F32_EPS)


@pytest.mark.parametrize("block", [1, 2, 8, 32, 128])
def test_fast_transform_equals_dense_block_diagonal(block):
  x = normal((3, 5, 256), seed=block)
  dense = np.kron(
    np.eye(256 // block), hadamard_matrix(block).astype(np.float64)
  )
  want = np.asarray(x, np.float64) @ dense
  # log2(b) exact butterfly stages in f32 plus one scaling: each output is
  # a sum of b terms of magnitude <= max|x|, rounded log2(b) + 1 times.
  bound = (
    (np.log2(block) + 1) * F32_EPS * np.sqrt(block) * float(jnp.abs(x).max())
  )
  np.testing.assert_allclose(block_hadamard(x, block), want, atol=bound + 1e-30)


@pytest.mark.parametrize("block", [4, 64, 1024])
def test_is_its_own_inverse_and_preserves_norms(block):
  x = normal((4, 1024), seed=7)
  y = block_hadamard(x, block)
  np.testing.assert_allclose(block_hadamard(y, block), x, atol=1e-5)
  np.testing.assert_allclose(
    jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
  )


@pytest.mark.parametrize("block", [16, 128])
def test_rotating_both_operands_keeps_the_product(block):
  # X W^T = (X H)(W H)^T since H H^T = I, to f32 rounding of the sums.
  x, w = normal((32, 256), seed=1), normal((48, 256), seed=2)
  want = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
  xh, wh = block_hadamard(x, block), block_hadamard(w, block)
  got = np.asarray(xh, np.float64) @ np.asarray(wh, np.float64).T
  np.testing.assert_allclose(got, want, atol=256 * 8 * F32_EPS * 16)


def test_runs_under_jit_with_bf16_input():
  x = normal((2, 64), jnp.bfloat16)
  out = jax.jit(block_hadamard, static_argnums=1)(x, 32)
  assert out.dtype == jnp.float32 and out.shape == (2, 64)


def test_bad_blocks_are_rejected():
  with raises("must be a power of two in"):
    block_hadamard(jnp.ones((2, 12)), 3)
  with raises("block=8 must divide the contraction size 12"):
    block_hadamard(jnp.ones((2, 12)), 8)
  with raises("needs an array with a last axis"):
    block_hadamard(jnp.float32(1.0), 1)


@pytest.mark.parametrize("block", [1, 2, 8, 128, 1024])
def test_kernel_form_is_bit_identical(block):
  """The kernels' butterflies (transposes, size-2 unstack) perform the same
  adds and subtracts as block_hadamard's slices: equal bit for bit."""
  x = normal((16, 2048), seed=block)
  ours = butterflies(x, block) * normalisation(block) if block > 1 else x
  np.testing.assert_array_equal(
    np.asarray(ours), np.asarray(block_hadamard(x, block))
  )
