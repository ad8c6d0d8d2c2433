"""The block-diagonal normalised Hadamard transform along the last axis.

For a block size ``b = 2^k`` the normalised Sylvester matrix is

    H_1 = [1],   H_2b = [[H_b, H_b], [H_b, -H_b]] / sqrt(2)

(symmetric, ``H_b H_b^T = I``), and ``H = blockdiag(H_b, ..., H_b)`` acts on
the last axis (the contraction axis K of a GEMM operand), so for ``X`` (M, K)
and ``W`` (N, K) with ``b | K``:

    (X H)(W H)^T = X H H^T W^T = X W^T.

Rotating both operands spreads an outlier channel over its block before
quantizing ("Training Transformers with 4-bit Integers", the HQ quantizer).
:func:`block_hadamard` is the fast Walsh-Hadamard transform (k butterfly
stages of adds and subtracts, exact in f32 up to the final scaling by
``b^-1/2``), the reference of every fused Hadamard kernel; it is its own
inverse (``H`` is symmetric and orthogonal).

>>> import jax.numpy as jnp
>>> block_hadamard(jnp.array([1.0, 0.0, 0.0, 0.0]), 4).tolist()
[0.5, 0.5, 0.5, 0.5]
>>> block_hadamard(jnp.array([1.0, 1.0, 1.0, 1.0]), 2).tolist()  # two blocks
[1.4142135381698608, 0.0, 1.4142135381698608, 0.0]
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

# Block sizes the forward quantizer may choose from (the paper searches
# 1 ... 1024; 1 is no rotation).
HADAMARD_BLOCKS = tuple(2**k for k in range(11))


def check_hadamard_block(block, k: int | None = None, name: str = "block"):
  """ValueError unless ``block`` is in :data:`HADAMARD_BLOCKS` (and divides
  ``k`` when given)."""
  if block not in HADAMARD_BLOCKS or isinstance(block, bool):
    raise ValueError(
      f"{name} must be a power of two in {HADAMARD_BLOCKS}, got {block!r}"
    )
  if k is not None and k % block:
    raise ValueError(
      f"{name}={block} must divide the contraction size {k}; the Hadamard "
      "block is applied along K"
    )


def hadamard_matrix(block: int) -> np.ndarray:
  """The normalised Sylvester Hadamard matrix ``H_block`` (float32)."""
  check_hadamard_block(block)
  h = np.ones((1, 1), np.float64)
  while h.shape[0] < block:
    h = np.block([[h, h], [h, -h]])
  return (h / math.sqrt(block)).astype(np.float32)


def butterflies(y: Array, block: int) -> Array:
  """The unnormalised transform of f32 ``y`` (R, C), ``block | C``: the
  butterfly stages ``(a, b) -> (a + b, a - b)`` on pairs ``(i, i + h)`` for
  h = 1, 2, ..., block / 2, in that order.

  Written with reshapes, transposes and a size-2 unstack/stack on the last
  axis only, which the Triton lowering accepts (``tt.trans``, ``tt.split``,
  ``tt.join``): the fused kernels' form. It performs exactly the adds and
  subtracts of :func:`block_hadamard` (same operands, same order), so the
  results are bit-identical (tested).
  """
  rows, cols = y.shape
  half = 1
  while half < block:
    groups = cols // (2 * half)
    pairs = jnp.transpose(y.reshape(rows, groups, 2, half), (0, 1, 3, 2))
    a, b = jnp.unstack(pairs, axis=-1)
    y = jnp.stack([a + b, a - b], axis=-1)
    y = jnp.transpose(y, (0, 1, 3, 2)).reshape(rows, cols)
    half *= 2
  return y


def normalisation(block: int) -> np.float32:
  """``RN(block^-1/2)``, the f32 factor applied after the butterflies."""
  return np.float32(1.0 / math.sqrt(block))


@functools.partial(jax.jit, static_argnames=("block",))
def block_hadamard(x: Array, block: int) -> Array:
  """``x @ blockdiag(H_block, ...)`` along the last axis, in float32.

  Args:
    x: float array whose last axis is a multiple of ``block``.
    block: a power of two in :data:`HADAMARD_BLOCKS`; 1 returns ``x`` (f32).

  Returns:
    float32 array of ``x``'s shape.
  """
  if x.ndim == 0:
    raise ValueError("block_hadamard needs an array with a last axis")
  check_hadamard_block(block, x.shape[-1])
  y = x.astype(jnp.float32)
  if block == 1:
    return y
  shape = y.shape
  y = y.reshape(-1, shape[-1] // block, block)
  half = 1
  while half < block:
    # Butterflies on pairs (i, i + half) inside groups of 2 * half: the same
    # adds and subtracts as :func:`butterflies`, written with slices, which
    # XLA fuses into one pass (the transposes of the kernels' form would
    # cost a pass over the tensor per stage).
    pairs = y.reshape(*y.shape[:-1], block // (2 * half), 2, half)
    a, b = pairs[..., 0, :], pairs[..., 1, :]
    y = jnp.stack([a + b, a - b], axis=-2).reshape(y.shape)
    half *= 2
  return (y * normalisation(block)).reshape(shape)
