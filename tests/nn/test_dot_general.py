"""QuantDotGeneral and QuantLinear inside NNX models and optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lowprec_jax.formats import random_bits
from lowprec_jax.nn import QuantDotGeneral, QuantLinear, QuantState
from lowprec_jax.ops import census, quantized_dot_general
from tests.helpers import normal

DIMS = (((1,), (0,)), ((), ()))


def test_injected_dot_general_equals_the_op_with_the_drawn_seeds():
  rngs = nnx.Rngs(params=0, quant=1)
  layer = nnx.Linear(
    96, 64, dot_general=QuantDotGeneral("jetfire_int8", rngs=rngs), rngs=rngs
  )
  base = int(layer.dot_general.state[...][0])
  x = normal((33, 96))
  kernel, bias = layer.kernel[...], layer.bias[...][None, :]

  @jax.jit
  def reference_grad(x, kernel, seed):
    def loss(x):
      y = quantized_dot_general(
        x, kernel, DIMS, config="jetfire_int8", seed=seed
      )
      return jnp.sum(y**2)

    return jax.grad(loss)(x)

  layer_grad = nnx.jit(
    nnx.grad(lambda m, x, b: jnp.sum((m(x) - b) ** 2), argnums=1)
  )
  for call in range(3):
    seed = random_bits(jnp.uint32(base), jnp.uint32(call), jnp.uint32(0))
    np.testing.assert_array_equal(
      reference_grad(x, kernel, seed), layer_grad(layer, x, bias)
    )
    assert int(layer.dot_general.state[...][1]) == call + 1


@pytest.mark.standard_promotion
def test_quant_state_is_not_a_param_and_survives_the_optimizer():
  layer = QuantLinear(32, 16, config="jetfire_int8", rngs=nnx.Rngs(0))
  assert isinstance(layer.dot_general.state, QuantState)
  assert not isinstance(layer.dot_general.state, nnx.Param)
  params = nnx.state(layer, nnx.Param)
  assert set(params.keys()) == {"kernel", "bias"}
  quant = nnx.state(layer, QuantState)
  leaves = jax.tree.leaves(quant)
  assert [(x.shape, x.dtype) for x in leaves] == [((2,), jnp.uint32)]
  opt = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)
  opt_leaves = jax.tree.leaves(nnx.state(opt, nnx.OptState))
  assert all(x.dtype != jnp.uint32 or x.shape == () for x in opt_leaves)

  @nnx.jit
  def step(m, opt, x):
    loss, g = nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(m)
    opt.update(m, g)
    return loss

  x = normal((8, 32))
  losses = [float(step(layer, opt, x)) for _ in range(5)]
  assert losses[-1] < losses[0]
  assert int(layer.dot_general.state[...][1]) == 5  # one draw per step


def test_quant_linear_matches_linear_with_same_params():
  rngs = nnx.Rngs(0)
  q = QuantLinear(48, 24, config="fp8_current", rngs=rngs)
  x = normal((10, 48))
  want = quantized_dot_general(x, q.kernel[...], DIMS, config="fp8_current")
  np.testing.assert_array_equal(q(x), want + q.bias[...][None, :])
  assert census(lambda m, x: m(x), q, x).total(quantized=True) == 1
  with pytest.raises(ValueError, match="sets dot_general itself"):
    QuantLinear(4, 4, config="bf16", dot_general=None, rngs=rngs)


def test_stochastic_config_without_rngs_raises():
  with pytest.raises(ValueError, match=r"pass rngs=nnx.Rngs\(quant=...\)"):
    QuantDotGeneral("jetfire_int8")
  assert QuantDotGeneral("fp8_current").state is None
  # An Rngs without a 'quant' (or 'default') stream: our error, with the path.
  with pytest.raises(ValueError, match=r"at 'mlp/up' rounds stochastically.*"
                     r"nnx.Rngs\(params=..., quant=...\)"):  # fmt: skip
    QuantDotGeneral("jetfire_int8", rngs=nnx.Rngs(params=0), path="mlp/up")
  assert QuantDotGeneral("jetfire_int8", rngs=nnx.Rngs(0)).state is not None


def test_remat_recomputes_the_same_noise():
  """nnx.remat recomputes the forward with the same seed: same gradients.

  Remat changes XLA's fusions, so fp32 results may differ in the last bits
  (rtol 1e-5); different noise would move them by ~1% (checked below).
  """

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = QuantLinear(32, 64, config="jetfire_int8", rngs=rngs)
      self.b = QuantLinear(64, 8, config="jetfire_int8", rngs=rngs)

    def __call__(self, x):
      return self.b(jax.nn.gelu(self.a(x)))

  x = normal((16, 32))
  plain, remat = Net(nnx.Rngs(3)), Net(nnx.Rngs(3))
  g1 = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(plain)
  g2 = nnx.jit(
    nnx.grad(lambda m: jnp.sum(nnx.remat(lambda m, x: m(x))(m, x) ** 2))
  )(remat)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  other = Net(nnx.Rngs(3))
  other.a.dot_general.state[...] = other.a.dot_general.state[...] + 1
  g3 = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(other)
  diff = jnp.abs(g3.a.kernel[...] - g1.a.kernel[...]).max()
  assert float(diff) > 1e-3 * float(jnp.abs(g1.a.kernel[...]).max())
