"""scale_by_adam_quantized: optax's arithmetic, quantized storage, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lowprec_jax.optim import (
  Codebook,
  Fp8Dre,
  QuantizedMoment,
  quantize_moment,
  scale_by_adam_quantized,
)
from pallas_kernels import quantized_adam as qa
from tests.helpers import rng
from tests.optim.helpers import bits

SHAPES = {"w": (8, 256), "odd": (3, 50), "scalar": ()}


def _tree(name, t=0):
  return {
    k: jnp.asarray(rng(name, k, t).standard_normal(s), jnp.float32)
    for k, s in SHAPES.items()
  }


@pytest.mark.standard_promotion
@pytest.mark.parametrize(
  "kwargs",
  [{}, {"nesterov": True, "eps_root": 1e-12, "b2": 0.95}],
  ids=["default", "nesterov_eps_root"],
)
def test_unquantized_formats_are_optax_scale_by_adam_bitwise(kwargs):
  ours = scale_by_adam_quantized(mu_format=None, nu_format=None, **kwargs)
  theirs = optax.scale_by_adam(**kwargs)
  states = [ours.init(_tree("p")), theirs.init(_tree("p"))]
  updates = [jax.jit(ours.update), jax.jit(theirs.update)]
  for t in range(3):
    out = [u(_tree("g", t), s) for u, s in zip(updates, states)]
    states = [o[1] for o in out]
    for a, b in zip(bits(out[0]), bits(out[1])):
      assert np.array_equal(a, b)


@pytest.mark.standard_promotion
def test_quantized_update_tracks_optax_within_the_format_error():
  """3 steps of E4M3+DRE moments against fp32 Adam. One requantization
  changes an element by at most 0.22/k relative (the group's smallest
  element lands near 2/fmax, in E4M3's subnormals), typically 2^-5/k, and
  the stored error decays with b2 = 0.999 (so up to 3 of them add up):
  v within 0.5 relative per element and 0.05 RMS; the update
  m_hat/sqrt(v_hat), |u| <= ~3, within atol 0.15."""
  ours = scale_by_adam_quantized(mu_format=Fp8Dre(), nu_format=Fp8Dre())
  theirs = optax.scale_by_adam()
  states = [ours.init(_tree("p")), theirs.init(_tree("p"))]
  for t in range(3):
    grads = _tree("g", t)
    (u0, states[0]), (u1, states[1]) = (
      tx.update(grads, s) for tx, s in zip((ours, theirs), states)
    )
  for k in SHAPES:
    np.testing.assert_allclose(u0[k], u1[k], atol=0.15)
    assert isinstance(states[0].mu[k], QuantizedMoment)
    got, want = states[0].nu[k].dequantize(), states[1].nu[k]
    rel = np.abs(np.asarray(got) / np.asarray(want) - 1)
    assert rel.max() <= 0.5 and np.sqrt(np.mean(rel**2)) <= 0.05


def test_none_gradient_leaves_are_passed_through():
  tx = scale_by_adam_quantized(mu_format=Fp8Dre(), nu_format=Fp8Dre())
  params = {"a": jnp.ones((2, 128)), "b": None}
  updates, _ = tx.update({"a": jnp.ones((2, 128)), "b": None}, tx.init(params))
  assert updates["b"] is None and updates["a"].shape == (2, 128)


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    (dict(mu_format="e4m3", nu_format=None), ValueError, "mu_format must be"),
    (
      dict(mu_format=Codebook(signed=False), nu_format=None),
      ValueError,
      "first moment needs a signed format",
    ),
    (
      dict(mu_format=Fp8Dre(), nu_format=Codebook()),
      ValueError,
      r"mu_format.group=128 and nu_format.group=256 must be equal",
    ),
    (
      dict(mu_format=Fp8Dre(), nu_format=None, implementation="cuda"),
      ValueError,
      r"implementation must be None or one of \('pallas', 'xla'\)",
    ),
    (
      dict(mu_format=None, nu_format=None, implementation="pallas"),
      NotImplementedError,
      "needs a quantized mu_format or nu_format",
    ),
  ],
)
def test_bad_arguments_raise(kwargs, error, match):
  with pytest.raises(error, match=match):
    scale_by_adam_quantized(**kwargs)


def test_non_float_parameter_raises_with_shape_and_dtype():
  tx = scale_by_adam_quantized(mu_format=Fp8Dre(), nu_format=Fp8Dre())
  with pytest.raises(ValueError, match=r"shape \(4, 128\) dtype int32"):
    tx.init({"ids": jnp.zeros((4, 128), jnp.int32)})


@pytest.mark.parametrize("b1, b2", [(0.9, 0.999), (0.9, 0.95), (0.5, 0.3)])
def test_v_floor_never_binds_for_exact_moments_and_is_tight(b1, b2):
  """Adam's exact moments satisfy v >= F m^2 (F = v_floor_factor) for any
  gradients: random heavy-tailed sequences never come within the margin,
  and the Cauchy-Schwarz extremal sequence g_{t-i} ~ (b1/b2)^i reaches
  V_FLOOR_MARGIN of the bound (so F is not loose)."""
  factor = float(qa.v_floor_factor(b1, b2))
  gen = rng("floor", b1, b2)
  g = gen.standard_t(1.5, (64, 300))  # 64 sequences of 300 steps
  m, v = np.zeros(64), np.zeros(64)
  for t in range(300):
    m = b1 * m + (1 - b1) * g[:, t]
    v = b2 * v + (1 - b2) * g[:, t] ** 2
    assert np.all(v >= factor * m * m)
  steps = 200
  extremal = (b1 / b2) ** np.arange(steps)[::-1]  # oldest first
  m = (1 - b1) * np.sum(b1 ** np.arange(steps) * extremal[::-1])
  v = (1 - b2) * np.sum(b2 ** np.arange(steps) * extremal[::-1] ** 2)
  np.testing.assert_allclose(factor * m * m / v, qa.V_FLOOR_MARGIN, rtol=1e-3)
  assert float(qa.v_floor_factor(0.9, 0.8)) == 0  # b1^2 >= b2: no bound


def test_zero_second_moment_beside_a_kept_first_moment_gives_a_bounded_step():
  """The zero-point problem: a stored v of 0 (8-bit dynamic map, v far
  below its group's absmax) next to a large stored m and a tiny new
  gradient made m / sqrt(v) huge; the floor bounds the step by
  1 / sqrt(F) (bias corrections aside)."""
  fmt_m, fmt_v = Codebook(group=256), Codebook(signed=False, group=256)
  tx = scale_by_adam_quantized(mu_format=fmt_m, nu_format=fmt_v)
  params = {"w": jnp.zeros((1, 256))}
  state = tx.init(params)
  m0 = jnp.ones((1, 256)).at[0, 0].set(1e3)  # one large m sets m's scale
  v0 = jnp.full((1, 256), 1e-12).at[0, 1].set(1e6)  # v0 rounds to 0 but one
  state = state._replace(
    count=jnp.asarray(1000, jnp.int32),
    mu={"w": quantize_moment(m0, fmt_m)},
    nu={"w": quantize_moment(v0, fmt_v)},
  )
  assert float(state.nu["w"].dequantize()[0, 5]) == 0  # the zero point
  updates, _ = tx.update({"w": jnp.full((1, 256), 1e-6)}, state)
  bound = 1 / np.sqrt(float(qa.v_floor_factor(0.9, 0.999)))
  # bias corrections at t = 1001: 1 - 0.9^t = 1, 1 - 0.999^t = 0.632
  assert np.max(np.abs(np.asarray(updates["w"]))) <= bound * np.sqrt(0.64)
