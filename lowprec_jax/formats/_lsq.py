"""LSQ: INT4 codes with a learned per-tensor step (Esser et al., 2020).

For values ``v``, a step ``s > 0`` and the INT4 range ``[Qn, Qp] = [-8, 7]``:

    y     = v * RN(1 / s)
    q     = clip(rint(y), -8, 7)                 (int8 containers)
    v_hat = q * s
    d v_hat / d v = 1 where -8 <= y <= 7, else 0        (masked STE)
    d v_hat / d s = q - y  where -8 <= y <= 7,  else q  (= Qn or Qp)

The step is initialised to ``2 mean|v| / sqrt(7)`` and its gradient scaled
by ``1 / sqrt(numel * 7)`` (the paper's choices). The released code keeps
``v / s`` in fp16 for the step gradient (2 bytes per element). Here the
backward gets what it needs from a second INT4 array, the **derivative
code**: ``rint(14 (q - y))`` in [-7, 7] inside the range (``q - y`` in
[-1/2, 1/2] to 1/28), and -8 where the value was clipped (its derivative is
then ``q`` itself, and the STE mask is 0). Packed, codes and derivative
codes cost one byte per element, half of bf16.

>>> import jax.numpy as jnp
>>> q, dq = lsq_quantize(jnp.array([0.26, -3.0, 9.0]), jnp.float32(0.5))
>>> q.tolist(), dq.tolist()  # 0.52 -> 1 (d = 0.48), -6 exact, 18 clipped
([1, -6, 7], [7, 0, -8])
"""

import jax.numpy as jnp
import numpy as np
from jax import Array

from pallas_kernels.lsq import (
  CLIPPED,
  DERIVATIVE_STEPS,
  lsq_codes,
  lsq_reciprocal,
)
from pallas_kernels.numerics import INT4_MAX


def lsq_initial_step(v: Array) -> Array:
  """``2 mean|v| / sqrt(7)`` (f32 scalar; 1 for an all-zero tensor)."""
  step = 2.0 * jnp.mean(jnp.abs(v.astype(jnp.float32))) / np.sqrt(INT4_MAX)
  return jnp.where(step > 0, step, 1.0).astype(jnp.float32)


def lsq_gradient_scale(numel: int) -> float:
  """The step gradient's scale ``1 / sqrt(numel * Qp)``."""
  return float(1.0 / np.sqrt(numel * INT4_MAX))


def _scaled(v: Array, step: Array) -> Array:
  return v.astype(jnp.float32) * lsq_reciprocal(step)


def lsq_quantize(v: Array, step: Array) -> tuple[Array, Array]:
  """(codes, derivative codes), both int8 in [-8, 7] (module docstring;
  the rounding rule is :func:`pallas_kernels.lsq.lsq_codes`).

  ``step`` is used as ``|step|`` (the paper keeps it positive by abs).
  """
  return lsq_codes(_scaled(v, step))


def lsq_fake_quantize(v: Array, step: Array) -> Array:
  """``clip(rint(v / s), -8, 7) * s`` in f32."""
  q, _ = lsq_quantize(v, step)
  return q.astype(jnp.float32) * jnp.abs(step.astype(jnp.float32))


def lsq_derivatives(
  codes: Array, derivative_codes: Array
) -> tuple[Array, Array]:
  """(STE mask, d v_hat / d s) in f32 from the two code arrays."""
  clipped = derivative_codes == CLIPPED
  inside = derivative_codes.astype(jnp.float32) * np.float32(
    1.0 / DERIVATIVE_STEPS
  )
  d = jnp.where(clipped, codes.astype(jnp.float32), inside)
  return jnp.where(clipped, 0.0, 1.0).astype(jnp.float32), d
