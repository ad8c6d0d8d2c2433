"""Counter-based random bits for stochastic rounding.

The random number for one element is a pure function of ``(seed, row, col)``,
where ``row`` and ``col`` are the element's global coordinates in the tensor
being quantized (``row`` is the flat index over every axis but the last,
``col`` the index along the last axis). Nothing depends on how a kernel tiles
the tensor, so every implementation that calls :func:`random_bits` with the
same coordinates gets the same bits, and a rematerialised forward pass
recomputes the same noise.

The code uses only ``uint32`` xor, shift, add and wrap-around multiply on
scalars and arrays, with Python-int constants: no ``jax.random``, no captured
array constants, no 64-bit arithmetic. That is exactly the subset Pallas
lowers on both GPU backends, so a kernel can call these functions verbatim.

The mixer is ``lowbias32`` (C. Wellons, "Prospecting for hash functions",
2018): a bijection on 32-bit integers with a measured bias of ~0.17 in his
avalanche metric. Four keyed rounds decorrelate rows, columns and seeds.
"""

import jax.numpy as jnp
from jax import Array

# Odd constants: the 32-bit golden ratio and the fractional digits of pi.
_GOLDEN = 0x9E3779B9
_PI_FRAC = 0x243F6A88


def mix32(x: Array) -> Array:
  """The ``lowbias32`` finalizer: a bijective avalanche mix of uint32 values."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x21F0AAAD)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0xD35A2D97)
  return x ^ (x >> 15)


def random_bits(seed: Array, row: Array, col: Array) -> Array:
  """Returns 32 random bits for the element at ``(row, col)`` under ``seed``.

  Args:
    seed: uint32 scalar (or array broadcastable to ``row``).
    row: uint32 global row index (all axes but the last, flattened).
    col: uint32 global column index (the last axis).

  Returns:
    uint32 array of the broadcast shape of the inputs.
  """
  seed = jnp.asarray(seed, jnp.uint32)
  key = mix32(seed ^ jnp.uint32(_PI_FRAC))
  h = mix32(key ^ (jnp.asarray(row, jnp.uint32) * jnp.uint32(_GOLDEN)))
  h = mix32(h + jnp.asarray(col, jnp.uint32))
  return mix32(h ^ key)


def uniform_from_bits(bits: Array) -> Array:
  """Maps uint32 bits to float32 in [0, 1) on a grid of 2^-24 (exact in f32).

  The top 24 bits are used, so the largest value is 1 - 2^-24 and the
  stochastic-rounding bias from the finite grid is at most 2^-25 of a step.
  """
  return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def derive_seed(seed: Array, salt: int) -> Array:
  """Derives an independent uint32 seed for one use (``salt``) of ``seed``.

  The quantized matmul quantizes several tensors per call (the forward
  operands, the gradient); each gets its own stream from one user seed.
  """
  salted = jnp.asarray(seed, jnp.uint32) + jnp.uint32(
    salt * _GOLDEN & 0xFFFFFFFF
  )
  return mix32(mix32(salted) ^ jnp.uint32(_PI_FRAC))
