"""The Linen adapter: nn.Dense(dot_general_cls=linen_dot_general_cls(...))."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lowprec_jax.nn import linen_dot_general_cls
from lowprec_jax.ops import census, quantized_dot_general
from tests.helpers import normal


def test_dense_forward_equals_the_op_and_grads_flow():
  dense = nn.Dense(16, dot_general_cls=linen_dot_general_cls("jetfire_int8"))
  x = normal((8, 32))
  keys = {"params": jax.random.key(0), "quant": jax.random.key(1)}
  variables = dense.init(keys, x)
  y = dense.apply(variables, x, rngs={"quant": jax.random.key(2)})
  kernel = variables["params"]["kernel"]
  want = quantized_dot_general(
    x, kernel, (((1,), (0,)), ((), ())), config="jetfire_int8", seed=0
  )  # RTN forward: the seed only affects gradients
  np.testing.assert_array_equal(y, want + variables["params"]["bias"][None, :])

  def loss(p):
    out = dense.apply({"params": p}, x, rngs={"quant": jax.random.key(3)})
    return jnp.sum(out**2)

  grads = jax.grad(loss)(variables["params"])
  assert grads["kernel"].shape == kernel.shape
  assert census(jax.grad(loss), variables["params"]).total(quantized=True) == 3


def test_census_rows_name_linen_module_paths():
  class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
      cls = linen_dot_general_cls("fp8_current")
      h = nn.Dense(32, dot_general_cls=cls, name="up")(x)
      return nn.Dense(4, name="head")(jax.nn.relu(h))

  model, x = Mlp(), normal((8, 16))
  params = model.init(jax.random.key(0), x)["params"]

  loss = lambda p: jnp.sum(model.apply({"params": p}, x))
  rep = census(jax.grad(loss), params)
  assert rep == census(jax.grad(loss), params)
  paths = {(r.path, r.quantized) for r in rep.records}
  # The adapter is a submodule of the Dense layer, so it names its own scope.
  assert paths == {("Mlp/up/LinenQuantDotGeneral_0", True), ("Mlp/head", False)}
