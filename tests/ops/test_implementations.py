"""implementation="pallas" against "xla": the same op, kernel by kernel.

The Pallas implementation quantizes with the quantize kernels (bit-identical
to the jnp quantizers), so both implementations multiply the very same codes
and scales:

* INT8 recipes: the INT8 GEMM kernel adds the same f32 terms in the same
  order as the "xla" GEMM, so forward and both gradients are bitwise equal.
* FP8 recipes: the products are exact in f32 and only the order of the f32
  sums differs. Each side is within (k + 3) u sum|terms| of the exact sum
  (k products, two scale multiplications, the output cast), so they differ by
  at most 2 (k + 4) u sum|terms|, with sum|terms| bounded by 1.25 times the
  product of the unquantized magnitudes (an FP8 value exceeds its input by
  less than one E5M2 step, 12.5%, per operand) -- the bound of the tight
  oracle in test_dot_general.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.ops import (
  census,
  quantized_dot_general,
)
from tests.helpers import F32_EPS, all_dots, normal
from tests.ops.reference import KERNEL_RECIPES, abs_dot

CONFIGS = KERNEL_RECIPES
# A 3-D linear layer, ragged against every tile: canonical M = 74, N = 72,
# K = 160.
DIMS = (((2,), (0,)), ((), ()))
LHS, RHS = (2, 37, 160), (160, 72)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _vjp(lhs, rhs, g, config, implementation):
  def f(a, b):
    return quantized_dot_general(
      a, b, DIMS, config=config, implementation=implementation, seed=7
    )

  out, vjp = jax.vjp(f, lhs, rhs)
  return (out, *vjp(g))


def _inputs(dtype, seed=0):
  lhs = normal(LHS, dtype, seed=seed)
  rhs = normal(RHS, dtype, seed=seed + 1)
  g = normal((*LHS[:2], RHS[1]), dtype, seed=seed + 2)
  return lhs, rhs, g


@pytest.mark.parametrize("config", list(CONFIGS))
def test_pallas_equals_xla(config):
  lhs, rhs, g = _inputs(jnp.float32)
  got = _vjp(lhs, rhs, g, CONFIGS[config], "pallas")
  want = _vjp(lhs, rhs, g, CONFIGS[config], "xla")
  if config.startswith("jetfire"):
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b)
    return
  scales = abs_dot(lhs, rhs, DIMS, g)
  for a, b, scale, k in zip(got, want, scales, (160, 72, 74)):
    bound = 2 * (k + 4) * F32_EPS * 1.25 * np.asarray(scale, np.float64)
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert np.all(diff <= bound), float(np.max(diff - bound))


def test_pallas_equals_xla_bf16_bitwise():
  lhs, rhs, g = _inputs(jnp.bfloat16, seed=3)
  got = _vjp(lhs, rhs, g, CONFIGS["jetfire_int8"], "pallas")
  want = _vjp(lhs, rhs, g, CONFIGS["jetfire_int8"], "xla")
  for a, b in zip(got, want):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(a, b)


def _grad_census(config, implementation):
  def loss(a, b):
    y = quantized_dot_general(
      a, b, DIMS, config=config, implementation=implementation, seed=1
    )
    return jnp.sum(y**2)

  lhs, rhs, _ = _inputs(jnp.float32)
  return census(jax.grad(loss, argnums=(0, 1)), lhs, rhs)


# The dot dtypes inside the kernels: E5M2 x E4M3 is widened to bf16 (Triton
# has no mixed FP8 dot); everything else stays 8-bit.
KERNEL_DOTS = {
  "jetfire_int8": {
    r: ("int8", "int8", "int32") for r in ("fwd", "dlhs", "drhs")
  },
  "fp8_current": {
    "fwd": ("float8_e4m3fn", "float8_e4m3fn", "float32"),
    "dlhs": ("bfloat16", "bfloat16", "float32"),
    "drhs": ("bfloat16", "bfloat16", "float32"),
  },
  "fp8_block": {
    r: ("float8_e4m3fn", "float8_e4m3fn", "float32")
    for r in ("fwd", "dlhs", "drhs")
  },
}


@pytest.mark.parametrize("config", list(KERNEL_DOTS))
def test_census_shows_the_pallas_kernels(config):
  records = _grad_census(CONFIGS[config], "pallas").records
  assert {r.role for r in records} == {"fwd", "dlhs", "drhs"}
  for r in records:
    assert r.implementation == "pallas" and r.count == 1
    dtypes = (r.lhs_dtype, r.rhs_dtype, r.accumulator)
    assert dtypes == KERNEL_DOTS[config][r.role]


def test_none_picks_xla_on_cpu():
  assert jax.default_backend() == "cpu"
  records = _grad_census(CONFIGS["fp8_block"], None).records
  assert {r.implementation for r in records} == {"xla"}


def _pallas_calls(jaxpr):
  """(name, number of outputs) of every pallas_call, recursively."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      found.append((eqn.params["name"], len(eqn.outvars)))
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)
      if hasattr(inner, "eqns"):
        found += _pallas_calls(inner)
  return found


def test_one_kernel_quantizes_g_for_both_backward_gemms():
  lhs, rhs, g = _inputs(jnp.float32)
  jaxpr = jax.make_jaxpr(_vjp.__wrapped__, static_argnums=(3, 4))(
    lhs, rhs, g, CONFIGS["jetfire_int8"], "pallas"
  )
  calls = sorted(_pallas_calls(jaxpr.jaxpr))
  assert calls == sorted(
    [("lpj_quantize_int8_block", 2)] * 2  # x and w
    + [("lpj_quantize_int8_block", 4)]  # g and g^T, one kernel
    + [("lpj_int8_block_matmul", 1)] * 3
  )
  # The GEMM dots are the kernels' int8 dots; nothing runs in XLA.
  assert all(
    str(d.invars[0].aval.dtype) == "int8" for d in all_dots(jaxpr.jaxpr)
  )
