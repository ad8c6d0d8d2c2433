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
  scale_by_adam_quantized,
)
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
