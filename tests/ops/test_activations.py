"""LayerNorm and GELU that save a quantized copy of their input (COAT)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Fp8, fake_quantize
from lowprec_jax.ops import (
  ACTIVATION_RESIDUAL_NAMES,
  COAT_SAVED_ACTIVATIONS,
  gelu,
  layer_norm,
)
from tests.helpers import F32_EPS, normal, rel_err

SAVED = COAT_SAVED_ACTIVATIONS  # E4M3, 1 x 16 groups, bf16 scales


def _ln_reference(x, scale, bias, eps=1e-6):
  """Plain fp32 LayerNorm whose gradients come from autodiff."""
  mu = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + eps) * scale[None, None] + bias[
    None, None
  ]


def _ln_inputs(shape=(6, 40, 96), seed=0):
  x = normal(shape, seed=seed, scale=2.0) + 0.5
  scale = 1 + 0.1 * normal(shape[-1:], seed=seed + 1)
  bias = 0.1 * normal(shape[-1:], seed=seed + 2)
  dy = normal(shape, seed=seed + 3)
  return x, scale, bias, dy


def _vjp(fn, args, dy):
  out, pullback = jax.vjp(fn, *args)
  return out, pullback(dy)


def test_unquantized_layer_norm_matches_autodiff_of_the_plain_op():
  """fp32 op vs autodiff of the fp32 formula: only rounding order differs.

  Each output is a short chain of fp32 ops over rows of 96; a budget of 2^-16
  relative (about 256 ulp) is far below any algebraic error (a wrong term
  gives O(1) relative error).
  """
  x, scale, bias, dy = _ln_inputs()
  got = _vjp(lambda *a: layer_norm(*a), (x, scale, bias), dy)
  want = _vjp(_ln_reference, (x, scale, bias), dy)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(g, w) < 2.0**-16


@pytest.mark.parametrize("approximate", [True, False])
def test_unquantized_gelu_matches_jax_nn_gelu(approximate):
  x, dy = normal((50, 64), seed=4, scale=3.0), normal((50, 64), seed=5)
  got = _vjp(lambda a: gelu(a, approximate=approximate), (x,), dy)
  want = _vjp(lambda a: jax.nn.gelu(a, approximate=approximate), (x,), dy)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(g, w) < 2.0**-18


@pytest.mark.parametrize("seed", [0, 1])
def test_quantized_layer_norm_is_the_exact_backward_at_the_saved_point(seed):
  """Forward: identical to the unquantized op (only the residual changes).

  Backward: bit-identical to the unquantized op's backward evaluated at the
  dequantized input. For fp32 x the dequantized value (4-bit significand times
  a bf16 scale, 12 bits) is exact in fp32, so both paths compute the same
  numbers in the same order.
  """
  x, scale, bias, dy = _ln_inputs(seed=seed)
  y_q, grads_q = _vjp(
    lambda *a: layer_norm(*a, saved=SAVED), (x, scale, bias), dy
  )
  y, _ = _vjp(lambda *a: layer_norm(*a), (x, scale, bias), dy)
  np.testing.assert_array_equal(y_q, y)
  x_saved = fake_quantize(x, SAVED)
  _, grads_at_saved = _vjp(
    lambda *a: layer_norm(*a), (x_saved, scale, bias), dy
  )
  for g, w in zip(grads_q, grads_at_saved):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("approximate", [True, False])
def test_quantized_gelu_is_the_exact_backward_at_the_saved_point(approximate):
  x, dy = normal((50, 64), seed=6, scale=3.0), normal((50, 64), seed=7)
  y_q, (dx_q,) = _vjp(
    lambda a: gelu(a, approximate=approximate, saved=SAVED), (x,), dy
  )
  y, _ = _vjp(lambda a: gelu(a, approximate=approximate), (x,), dy)
  np.testing.assert_array_equal(y_q, y)
  x_saved = fake_quantize(x, SAVED)
  _, (dx_at_saved,) = _vjp(
    lambda a: gelu(a, approximate=approximate), (x_saved,), dy
  )
  np.testing.assert_array_equal(dx_q, dx_at_saved)


@pytest.mark.parametrize("approximate", [True, False])
def test_quantized_gelu_gradient_error_is_bounded_by_the_input_error(
  approximate,
):
  """|dx_q - dx| <= |dy| * L * |x_saved - x| elementwise, where L bounds
  |gelu''| (the Lipschitz constant of gelu'), measured on a fine grid with 5%
  margin (gelu'' is smooth, max 2 phi(0) ~ 0.80 for the exact form), plus fp32
  rounding of the slope (8 ulp of |dy| |gelu'|, |gelu'| <= 1.13)."""
  grid = jnp.linspace(-8, 8, 200001)
  second = jax.vmap(jax.grad(jax.grad(lambda t: jax.nn.gelu(t, approximate))))
  lipschitz = 1.05 * float(jnp.max(jnp.abs(second(grid))))
  x, dy = normal((64, 96), seed=8, scale=3.0), normal((64, 96), seed=9)
  _, (dx_q,) = _vjp(
    lambda a: gelu(a, approximate=approximate, saved=SAVED), (x,), dy
  )
  _, (dx,) = _vjp(lambda a: gelu(a, approximate=approximate), (x,), dy)
  dx_err = np.abs(np.asarray(dx_q, np.float64) - np.asarray(dx, np.float64))
  x_err = np.abs(np.asarray(fake_quantize(x, SAVED)) - np.asarray(x))
  bound = np.abs(np.asarray(dy)) * (lipschitz * x_err + 8 * 1.13 * F32_EPS)
  assert np.all(dx_err <= bound)
  assert dx_err.max() > 0  # the saved input really was quantized


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantized_layer_norm_gradient_error_tracks_the_input_error(seed):
  """Relative error of dx, dscale, dbias against the fp32 op.

  A relative perturbation e of the centred input moves xh by about e (after
  renormalisation) and dx = r (g - mean g - xh mean(g xh)) by about e times
  |xh mean(g xh)| / |dx| <= 1 in norm, so ||ddx|| / ||dx|| <~ e; dscale sums
  dy * xh, so it moves by about e too; dbias does not depend on x. E4M3 RTN
  gives e <= 2^-4 per element (half a step of a 3-bit mantissa); we measure e
  and allow 2 e for the cross terms.
  """
  x, scale, bias, dy = _ln_inputs(seed=seed)
  _, (dx_q, ds_q, db_q) = _vjp(
    lambda *a: layer_norm(*a, saved=SAVED), (x, scale, bias), dy
  )
  _, (dx, ds, db) = _vjp(lambda *a: layer_norm(*a), (x, scale, bias), dy)
  centred = x - x.mean(-1, keepdims=True)
  x_saved = fake_quantize(x, SAVED)
  e = rel_err(x_saved - x_saved.mean(-1, keepdims=True), centred)
  assert 0 < e < 2.0**-4
  assert rel_err(dx_q, dx) < 2 * e
  assert rel_err(ds_q, ds) < 2 * e
  np.testing.assert_array_equal(db_q, db)


def _residual_leaves(fn, *args):
  pullback = jax.eval_shape(lambda *a: jax.vjp(fn, *a)[1], *args)
  return [
    (leaf.shape, np.dtype(leaf.dtype)) for leaf in jax.tree.leaves(pullback)
  ]


def test_saved_residuals_are_fp8_codes_and_bf16_scales():
  """What the backward pass keeps: E4M3 codes of x and one bf16 scale per
  16 features, plus the LayerNorm's own parameters; no copy of x in bf16."""
  x = jnp.ones((8, 32, 96), jnp.bfloat16)
  scale = bias = jnp.ones((96,), jnp.float32)
  ln = _residual_leaves(lambda *a: layer_norm(*a, saved=SAVED), x, scale, bias)
  assert sorted(ln, key=str) == sorted(
    [
      ((8, 32, 96), np.dtype(jnp.float8_e4m3fn)),
      ((8, 32, 6), np.dtype(jnp.bfloat16)),
      ((96,), np.dtype(np.float32)),
      ((96,), np.dtype(np.float32)),
    ],
    key=str,
  )
  act = _residual_leaves(lambda a: gelu(a, saved=SAVED), x)
  assert act == [
    ((8, 32, 96), np.dtype(jnp.float8_e4m3fn)),
    ((8, 32, 6), np.dtype(jnp.bfloat16)),
  ]
  # Unquantized: exactly x, where autodiff of jax.nn.gelu keeps four arrays.
  assert _residual_leaves(gelu, x) == [((8, 32, 96), np.dtype(jnp.bfloat16))]
  assert len(_residual_leaves(jax.nn.gelu, x)) > 1


def test_bf16_inputs_give_bf16_cotangents_and_remat_names_work():
  x, scale, bias, dy = _ln_inputs(shape=(4, 24, 64))
  x, dy = x.astype(jnp.bfloat16), dy.astype(jnp.bfloat16)

  def f(x, scale, bias):
    h = layer_norm(x, scale, bias, saved=SAVED)
    return gelu(h, saved=SAVED)

  _, grads = _vjp(f, (x, scale, bias), dy)
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32, jnp.float32]
  policy = jax.checkpoint_policies.save_only_these_names(
    *ACTIVATION_RESIDUAL_NAMES
  )
  _, remat_grads = _vjp(jax.checkpoint(f, policy=policy), (x, scale, bias), dy)
  for g, r in zip(grads, remat_grads):
    np.testing.assert_array_equal(g, r)


def test_bad_input_raises_with_shapes_and_dtypes():
  x = jnp.ones((4, 32))
  with pytest.raises(
    ValueError, match=r"x has shape \(4, 32\) and dtype int32"
  ):
    gelu(jnp.ones((4, 32), jnp.int32))
  with pytest.raises(ValueError, match=r"scale has shape \(16,\).*expected "):
    layer_norm(x, jnp.ones((16,)))
  with pytest.raises(ValueError, match="saved must be None or a QuantFormat"):
    gelu(x, saved="e4m3")
  with pytest.raises(ValueError, match="Fp8.scale_storage"):
    Fp8.groups(16, "e4m3", "float16")
