"""Causal attention with FlashAttention's residuals only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import normal, rel_err
from train.attention import causal_attention


@pytest.mark.parametrize("shape", [(2, 16, 4, 8), (1, 33, 2, 16)])
def test_matches_jax_nn_dot_product_attention(shape):
  """fp32 inputs: the same math in another order. Softmax and two
  contractions of length <= 33 in fp32 give relative errors ~1e-7; 2^-17 is
  a tight budget that any algebraic mistake (a missing term, a wrong mask)
  exceeds by orders of magnitude."""
  q, k, v, do = (normal(shape, seed=s) for s in range(4))
  ours, ours_vjp = jax.vjp(causal_attention, q, k, v)

  def ref(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)

  want, want_vjp = jax.vjp(ref, q, k, v)
  assert rel_err(ours, want) < 2.0**-17
  for g, w in zip(ours_vjp(do), want_vjp(do)):
    assert rel_err(g, w) < 2.0**-17


def test_keeps_only_q_k_v_and_the_log_sum_exp():
  q = jax.ShapeDtypeStruct((2, 64, 4, 32), jnp.bfloat16)
  pullback = jax.eval_shape(
    lambda *a: jax.vjp(causal_attention, *a)[1], q, q, q
  )
  leaves = [(x.shape, np.dtype(x.dtype)) for x in jax.tree.leaves(pullback)]
  assert sorted(leaves, key=str) == sorted(
    [((2, 64, 4, 32), np.dtype(jnp.bfloat16))] * 3
    + [((2, 4, 64), np.dtype(np.float32))],
    key=str,
  )


def test_bf16_gradients_have_bf16_dtype_and_are_finite():
  q, k, v, do = (normal((1, 8, 2, 8), jnp.bfloat16, seed=s) for s in range(4))
  grads = jax.vjp(causal_attention, q, k, v)[1](do)
  assert all(g.dtype == jnp.bfloat16 for g in grads)
  assert all(bool(jnp.isfinite(g).all()) for g in grads)
