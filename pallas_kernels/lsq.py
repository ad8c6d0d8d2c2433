"""LSQ's rounding rule on scaled values: codes and derivative codes.

The one definition of what ``lowprec_jax.formats`` (the LSQ quantizer, its
module docstring states the math) and the fused Hadamard quantize kernel
(:mod:`pallas_kernels.hadamard_quantize`) compute from ``y = v * RN(1/s)``:

    q = clip(rint(y), -8, 7)
    d = -8 where y is outside [-8, 7] (clipped), else clip(rint(14 (q - y)), -7, 7)

both int8. Pure jnp on values: it runs in XLA and inside kernels alike.

>>> import jax.numpy as jnp
>>> q, d = lsq_codes(jnp.array([0.52, -6.0, 18.0]))
>>> q.tolist(), d.tolist()
([1, -6, 7], [7, 0, -8])
"""

import jax.numpy as jnp
from jax import Array

from pallas_kernels.numerics import INT4_MAX, INT4_MIN, divided_reciprocal, rint

DERIVATIVE_STEPS = 14  # d = code / 14 inside the range
CLIPPED = -8  # the derivative code of a clipped value
TINY_STEP = 2.0**-126  # |step| is floored here before the reciprocal


def lsq_reciprocal(step: Array) -> Array:
  """``RN(1 / max(|step|, 2^-126))`` in f32: what scaled values multiply."""
  s = jnp.maximum(jnp.abs(step.astype(jnp.float32)), TINY_STEP)
  return divided_reciprocal(s)


def lsq_codes(y: Array) -> tuple[Array, Array]:
  """(codes, derivative codes) of f32 scaled values ``y`` (module docstring)."""
  q = jnp.clip(rint(y), INT4_MIN, INT4_MAX)
  clipped = (y < INT4_MIN) | (y > INT4_MAX)
  inside = jnp.clip(rint(DERIVATIVE_STEPS * (q - y)), -7, 7)
  d = jnp.where(clipped, CLIPPED, inside)
  return q.astype(jnp.int8), d.astype(jnp.int8)
