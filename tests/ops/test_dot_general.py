"""quantized_dot_general against two oracles, and under jax transforms.

Oracle 1 (tight): the fake-quant reference (tests/ops/reference.py) on the
very same quantized values. Both sides sum the same products; the op sums
exact int32 (or exact fp8-product) partials per K chunk, rescales with two
fp32 multiplies and adds the chunks in fp32, while the reference sums all K
products in fp32. Each side's rounding error is at most (K + 3) u sum|ab|
(u = 2^-24, standard summation bound), so we allow 2 (K + 4) u sum|ab| with
sum|ab| taken on the unquantized magnitudes times 1.25 (a quantized value
exceeds its input by at most half an FP8 step, < 6.25%), plus half a bf16
ulp of the result when the output is bf16.

Oracle 2 (loose): full precision. Budgets are relative Frobenius errors for
unit Gaussians, about twice the prediction from the quantizers' noise:
  INT8 32x32, RTN: per-element RMS error s/sqrt(12) with s = absmax/127 ~
  3.4/127 -> 0.0077; a product of two quantized operands ~ sqrt(2) * 0.0077 =
  0.011 -> budget 0.02. SR on g adds s/sqrt(6) -> 0.013 -> budget 0.03.
  E4M3 RTN: relative RMS ~ 2^-3/sqrt(12)/1.44 = 0.025 per operand -> 0.035
  -> budget 0.07. E5M2 g (2^-2 spacing) -> sqrt(0.05^2 + 0.025^2) = 0.056
  -> budget 0.12. fp8_block drhs requantizes x: three E4M3 roundings -> 0.043
  -> budget 0.09.
Each test also demands at least a fifth of the predicted error, so a silent
full-precision fallback would fail.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.ops import (
  RESIDUAL_NAMES,
  fp8_block,
  fp8_current,
  jetfire_int8,
  quantized_dot_general,
)
from lowprec_jax.ops._dimension_numbers import canonicalize
from tests.helpers import F32_EPS, all_dots, normal, rel_err, tree_bytes
from tests.ops.reference import abs_dot, reference

CONFIGS = {
  "jetfire_int8": jetfire_int8(),
  "jetfire_int8_b64": jetfire_int8(64),
  "jetfire_int8_b128": jetfire_int8(128),
  "fp8_current": fp8_current(),
  "fp8_block": fp8_block(),
  "fp8_block32": fp8_block(32),
}

DIMS = (((1,), (0,)), ((), ()))  # a Linear: x's last axis against w's first
CASES = {
  "matmul_ragged": ((33, 70), (70, 45), (((1,), (0,)), ((), ()))),
  "linear_3d": ((2, 40, 96), (96, 72), (((2,), (0,)), ((), ()))),
  "nt": ((64, 160), (96, 160), (((1,), (1,)), ((), ()))),
  "batched": ((3, 40, 50), (3, 50, 30), (((2,), (1,)), ((0,), (0,)))),
  "two_contracting": ((4, 6, 20), (6, 20, 9), (((1, 2), (0, 1)), ((), ()))),
  "contract_middle": ((5, 33, 7), (33, 11), (((1,), (0,)), ((), ()))),
}


@functools.partial(jax.jit, static_argnums=(2, 4))
def _vjp(lhs, rhs, dims, g, config, seed):
  f = lambda a, b: quantized_dot_general(a, b, dims, config=config, seed=seed)
  out, vjp = jax.vjp(f, lhs, rhs)
  return (out, *vjp(g))


def _assert_tight(got, want, scale, k, dtype):
  got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
  want = np.asarray(want, np.float64)
  bound = 2 * (k + 4) * F32_EPS * 1.25 * np.asarray(scale, np.float64)
  if dtype == jnp.bfloat16:
    bound = bound + 2.0**-8 * np.abs(want)
  diff = np.abs(got - want)
  assert np.all(diff <= bound + 1e-30), float(np.max(diff - bound))


def _check_against_fake_quant(case, config, dtype, seed):
  lshape, rshape, dims = CASES[case]
  lhs = normal(lshape, dtype, seed=seed)
  rhs = normal(rshape, dtype, seed=seed + 100)
  out = jax.eval_shape(lambda a, b: jax.lax.dot_general(a, b, dims), lhs, rhs)
  g = normal(out.shape, dtype, seed=seed + 200)
  got = _vjp(lhs, rhs, dims, g, CONFIGS[config], seed)
  oracle = functools.partial(reference, dims=dims, config=CONFIGS[config])
  want = jax.jit(oracle)(lhs, rhs, g=g, seed=seed)
  scale = jax.jit(functools.partial(abs_dot, dims=dims))(lhs, rhs, g=g)
  _, m, n, k = canonicalize(lhs, rhs, dims).bmnk
  for name, g_, w_, s_, k in zip(
    ("out", "dlhs", "drhs"), got, want, scale, (k, n, m)
  ):
    assert g_.shape == w_.shape, name
    _assert_tight(g_, w_, s_, k, dtype)
  assert [x.dtype for x in got] == [dtype] * 3


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_fake_quant_reference(case, config):
  _check_against_fake_quant(case, config, jnp.float32, 0)


@pytest.mark.parametrize("config", ["jetfire_int8", "fp8_current", "fp8_block"])
@pytest.mark.parametrize("case", ["matmul_ragged", "linear_3d", "batched"])
@pytest.mark.parametrize("seed", [1, 2])
def test_matches_fake_quant_reference_bf16(case, config, seed):
  _check_against_fake_quant(case, config, jnp.bfloat16, seed)


LOOSE = {  # (out, dlhs, drhs) budgets, derived in the module docstring
  "jetfire_int8": ((0.02, 0.03, 0.03), (0.011, 0.013, 0.013)),
  "fp8_current": ((0.07, 0.12, 0.12), (0.035, 0.056, 0.056)),
  "fp8_block": ((0.07, 0.07, 0.09), (0.035, 0.035, 0.043)),
}


@pytest.mark.parametrize("config", list(LOOSE))
@pytest.mark.parametrize("seed", [0, 1])
def test_close_to_full_precision(config, seed):
  lhs = normal((256, 384), seed=seed)
  rhs = normal((384, 192), seed=seed + 1)
  g = normal((256, 192), seed=seed + 2)
  got = _vjp(lhs, rhs, DIMS, g, CONFIGS[config], seed)
  hp = jax.lax.Precision.HIGHEST
  want = (
    jnp.dot(lhs, rhs, precision=hp),
    jnp.dot(g, rhs.T, precision=hp),
    jnp.dot(lhs.T, g, precision=hp),
  )
  budgets, predicted = LOOSE[config]
  for name, a, b, budget, pred in zip(
    ("out", "dlhs", "drhs"), got, want, budgets, predicted
  ):
    err = rel_err(a, b)
    assert pred / 5 < err < budget, (name, err)


@pytest.mark.parametrize("config", ["jetfire_int8", "fp8_current", "fp8_block"])
def test_jaxpr_dots_take_8bit_operands(config):
  """Every dot in the forward and backward program is int8 or fp8 (the
  (K, N) weight's gradient is x^T . g^T: E4M3 x E5M2)."""
  lhs, rhs = normal((64, 96), jnp.bfloat16), normal((96, 32), jnp.bfloat16)

  def loss(a, b):
    y = quantized_dot_general(a, b, DIMS, config=CONFIGS[config], seed=1)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(lhs, rhs)
  dots = all_dots(jaxpr.jaxpr)
  assert len(dots) == 3  # fwd, dlhs, drhs (K chunks are one scanned dot)
  pairs = sorted(
    (str(d.invars[0].aval.dtype), str(d.invars[1].aval.dtype)) for d in dots
  )
  expected = {
    "jetfire_int8": [("int8", "int8")] * 3,
    "fp8_current": [("float8_e4m3fn", "float8_e4m3fn")]
    + [("float8_e5m2", "float8_e4m3fn"), ("float8_e4m3fn", "float8_e5m2")],
    "fp8_block": [("float8_e4m3fn", "float8_e4m3fn")] * 3,
  }[config]
  assert pairs == sorted(expected)
  for d in dots:
    acc = d.outvars[0].aval.dtype
    assert acc == (jnp.int32 if config.startswith("jetfire") else jnp.float32)


def _linear(config, seed=3, **kw):
  return lambda a, b: quantized_dot_general(
    a, b, DIMS, config=config, seed=seed, **kw
  )


def _loss(f):
  return lambda a, b: jnp.sum(f(a, b).astype(jnp.float32) ** 2)


@pytest.mark.parametrize("config", ["jetfire_int8"])
def test_jit_equals_eager_bitwise(config):
  lhs, rhs = normal((33, 70)), normal((70, 45), seed=1)
  f = _linear(CONFIGS[config])
  np.testing.assert_array_equal(f(lhs, rhs), jax.jit(f)(lhs, rhs))
  grad = jax.grad(_loss(f), argnums=(0, 1))
  for a, b in zip(grad(lhs, rhs), jax.jit(grad)(lhs, rhs)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("config", ["jetfire_int8", "fp8_current"])
def test_vmap_equals_per_example_calls(config):
  """Same quantization per example. INT8 sums are exact int32, so vmap is
  bitwise equal; FP8 partial sums are fp32, whose order XLA may change for a
  batched dot: the tight fp32 bound of the module docstring applies."""
  lhs, rhs = normal((4, 33, 70)), normal((70, 45), seed=1)
  f = _linear(CONFIGS[config])
  grad = jax.grad(_loss(f), argnums=(0, 1))
  batched = jax.jit(jax.vmap(f, in_axes=(0, None)))(lhs, rhs)
  gb = jax.jit(jax.vmap(grad, in_axes=(0, None)))(lhs, rhs)
  f, grad = jax.jit(f), jax.jit(grad)
  for i in range(4):
    pairs = [(batched[i], f(lhs[i], rhs))]
    pairs += list(zip((gb[0][i], gb[1][i]), grad(lhs[i], rhs)))
    for a, b in pairs:
      if config.startswith("jetfire"):
        np.testing.assert_array_equal(a, b)
      else:
        tol = 2 * (70 + 4) * F32_EPS * float(jnp.abs(b).max()) * 70
        np.testing.assert_allclose(a, b, rtol=0, atol=tol)


@pytest.mark.parametrize("config", ["jetfire_int8", "fp8_current", "fp8_block"])
def test_checkpoint_keeps_exactly_the_quantized_residuals(config):
  """Under save_only_these_names(RESIDUAL_NAMES) the saved values are the
  8-bit codes and fp32 scales only, and the gradients are bit-identical to
  those without remat (and with everything recomputed)."""
  lhs, rhs = normal((64, 96), jnp.bfloat16), normal((96, 32), jnp.bfloat16)
  seed, cfg = jnp.uint32(7), CONFIGS[config]
  f = lambda a, b, s: quantized_dot_general(a, b, DIMS, config=cfg, seed=s)
  save = jax.checkpoint_policies.save_only_these_names(*RESIDUAL_NAMES)
  variants = {
    "plain": f,
    "save_quantized": jax.checkpoint(f, policy=save),
    "save_nothing": jax.checkpoint(
      f, policy=jax.checkpoint_policies.nothing_saveable
    ),
  }
  g = normal((64, 32), jnp.bfloat16, seed=9)
  grads = {}
  for name, fn in variants.items():
    grads[name] = jax.jit(lambda a, b, s, fn=fn: jax.vjp(fn, a, b, s)[1](g))(
      lhs, rhs, seed
    )[:2]
    if name == "save_quantized":
      vjp = jax.eval_shape(
        lambda a, b, s, fn=fn: jax.vjp(fn, a, b, s)[1], lhs, rhs, seed
      )
      leaves = jax.tree.leaves(vjp)
      kinds = sorted((str(x.dtype), x.shape) for x in leaves if x.ndim == 3)
      code = "int8" if config.startswith("jetfire") else "float8_e4m3fn"
      # Saved in the backward GEMMs' layouts: w as stored (K, N), and x^T
      # where drhs reuses x's codes (fp8_block requantizes x along M).
      x_shape = (1, 64, 96) if config == "fp8_block" else (1, 96, 64)
      assert [k for k in kinds if k[0] == code] == sorted(
        [(code, x_shape), (code, (1, 96, 32))]
      )
      assert all(str(x.dtype) in (code, "float32", "uint32") for x in leaves)
      assert not any(x.dtype == jnp.bfloat16 for x in leaves)
  for name in ("save_quantized", "save_nothing"):
    for a, b in zip(grads["plain"], grads[name]):
      np.testing.assert_array_equal(a, b)


def test_residual_bytes_against_bf16():
  """INT8 residuals of one linear are at most 0.55x the bf16 ones."""
  x = jax.ShapeDtypeStruct((4096, 1024), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((1024, 4096), jnp.bfloat16)

  def residuals(f):
    return jax.eval_shape(lambda a, b: jax.vjp(f, a, b)[1], x, w)

  bf16 = tree_bytes(residuals(lambda a, b: jax.lax.dot_general(a, b, DIMS)))
  assert bf16 == 2 * (4096 * 1024 + 1024 * 4096)
  for config, limit in (("jetfire_int8", 0.55), ("fp8_current", 0.55)):
    got = tree_bytes(residuals(_linear(CONFIGS[config])))
    assert got / bf16 <= limit, (config, got / bf16)
  int8 = tree_bytes(residuals(_linear(CONFIGS["jetfire_int8"])))
  # codes + one fp32 scale per 32x32 block + the uint32 seed
  assert int8 == 2 * 4096 * 1024 * (1 + 4 / 1024) + 4


def test_same_seed_same_bits_other_seed_other_bits():
  lhs, rhs = normal((64, 96)), normal((96, 64), seed=1)
  grad = lambda s: jax.grad(  # noqa: E731
    _loss(_linear(CONFIGS["jetfire_int8"], seed=s)), argnums=(0, 1)
  )(lhs, rhs)
  a, b, c = grad(5), grad(5), grad(jax.random.key(6))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])


def test_dtypes_follow_primals_and_preferred_element_type():
  lhs, rhs = normal((32, 64), jnp.bfloat16), normal((64, 32))
  f = _linear(CONFIGS["fp8_current"])
  assert f(lhs, rhs).dtype == jnp.float32  # promoted, like lax.dot_general
  g = _linear(CONFIGS["fp8_current"], preferred_element_type=jnp.bfloat16)
  assert g(lhs, rhs).dtype == jnp.bfloat16
  dl, dr = jax.grad(_loss(f), argnums=(0, 1))(lhs, rhs)
  assert dl.dtype == jnp.bfloat16 and dr.dtype == jnp.float32


def test_out_sharding_and_explicit_mesh():
  mesh = jax.make_mesh((2,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
  lhs, rhs = normal((64, 96)), normal((96, 32), seed=1)
  f = _linear(CONFIGS["jetfire_int8"], out_sharding=spec)
  out = jax.jit(f)(lhs, rhs)
  assert out.sharding == spec
  np.testing.assert_array_equal(out, _linear(CONFIGS["jetfire_int8"])(lhs, rhs))
  explicit = jax.make_mesh(
    (2,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,)
  )
  P = jax.sharding.PartitionSpec
  with jax.set_mesh(explicit):
    ls, rs = jax.device_put(lhs, P("x", None)), jax.device_put(rhs, P())
    y = jax.jit(_linear(CONFIGS["jetfire_int8"]))(ls, rs)
    assert jax.typeof(y).sharding.spec == P("x", None)
    dl, dr = jax.jit(
      jax.grad(_loss(_linear(CONFIGS["jetfire_int8"])), argnums=(0, 1))
    )(ls, rs)
    assert jax.typeof(dl).sharding.spec == P("x", None)
    assert jax.typeof(dr).sharding.spec == P(None, None)
  np.testing.assert_array_equal(y, out)


def test_empty_contraction_gives_zeros():
  x, w = jnp.ones((3, 0)), jnp.ones((0, 4))
  out = quantized_dot_general(x, w, DIMS, config="fp8_current")
  assert out.shape == (3, 4) and bool(jnp.all(out == 0))
