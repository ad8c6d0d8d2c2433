"""LSQ codes and the derivative codes the backward recomputes from."""

import jax.numpy as jnp
import numpy as np

from lowprec_jax.formats._lsq import (
  lsq_derivatives,
  lsq_fake_quantize,
  lsq_gradient_scale,
  lsq_initial_step,
  lsq_quantize,
)
from tests.helpers import normal


def test_codes_and_derivatives_by_hand():
  # step 0.5: y = 2 v.
  v = jnp.array([0.26, -3.0, 9.0, -4.3, 3.6, -4.0, 0.0])
  q, d = lsq_quantize(v, jnp.float32(0.5))
  # y = 0.52, -6, 18, -8.6, 7.2, -8, 0: -8.6 and 7.2 clip (y < -8, y > 7);
  # -8 is representable and unclipped.
  assert q.tolist() == [1, -6, 7, -8, 7, -8, 0]
  # d = q - y inside, to 1/14: 0.48 -> 7, 0 -> 0, -8 -> 0; clipped -> -8.
  assert d.tolist() == [7, 0, -8, -8, -8, 0, 0]
  mask, ds = lsq_derivatives(q, d)
  assert mask.tolist() == [1, 1, 0, 0, 0, 1, 1]
  np.testing.assert_allclose(ds, [0.5, 0, 7, -8, 7, 0, 0])


def test_recomputed_derivative_is_within_1_28_of_the_exact_one():
  v = normal((64, 96), seed=4) * 3.0
  step = jnp.float32(0.4)
  q, d = lsq_quantize(v, step)
  mask, ds = lsq_derivatives(q, d)
  y = np.asarray(v, np.float64) / 0.4
  inside = (y >= -8) & (y <= 7)
  exact = np.where(inside, np.asarray(q) - y, np.asarray(q))
  np.testing.assert_array_equal(mask, inside.astype(np.float32))
  assert np.abs(np.asarray(ds) - exact).max() <= 1 / 28 + 1e-6
  assert (~inside).any() and inside.any()


def test_initial_step_fake_quantize_and_gradient_scale():
  v = jnp.array([1.0, -3.0, 2.0, 0.0])
  np.testing.assert_allclose(
    lsq_initial_step(v), 2 * 1.5 / np.sqrt(7), rtol=1e-6
  )
  assert float(lsq_initial_step(jnp.zeros(3))) == 1.0
  # A negative step is used as its magnitude (the paper's abs()).
  np.testing.assert_array_equal(
    lsq_fake_quantize(v, jnp.float32(-0.5)), [1.0, -3.0, 2.0, 0.0]
  )
  assert lsq_gradient_scale(700) == 1 / np.sqrt(4900)
