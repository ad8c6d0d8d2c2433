"""``quantized_dot_general(..., implementation=...)`` against ``"xla"``.

The tests of every kernel implementation of the op (``"pallas"``, the
portable Triton kernels, and ``"mosaic"``, the Hopper kernels); each
subclass in ``test_implementations.py`` names one implementation, its shape
(``benchmarks/shapes.py``) and what it is expected to show. An empty table
skips that test for the implementation.

Every implementation quantizes with its quantize kernels, bit-identical to
the jnp quantizers of ``"xla"`` (for every tile of the recipes), so both
multiply the very same codes and scales:

* INT8 recipes: a kernel that adds the same f32 terms in the same order as
  the ``"xla"`` GEMM gives forward and both gradients bit for bit
  (``int8_bitwise``: the Pallas kernels; the Hopper kernels interpreted).
* FP8 recipes (and INT8 where not bitwise): the products are exact in f32
  and only the order of the f32 sums differs. Each side is within (k + 3) u
  sum|terms| of the exact sum (k products, two scale multiplications, the
  output cast), so they differ by at most 2 (k + 4) u sum|terms|, with
  sum|terms| bounded by 1.25 times the product of the unquantized
  magnitudes (an FP8 value exceeds its input by less than one E5M2 step,
  12.5%, per operand) -- the bound of the tight oracle in
  test_dot_general.py. Where an implementation's summation order is not
  pinned down (``rel_err_budget``: the Hopper kernels), the relative error
  of a sum of n terms of mixed signs is ~sqrt(n) u in f32 (~1e-6 here); on
  a GPU 2^-7 bounds the Hopper FP8 accumulator (see fp8_matmul_base).

The interpreted Mosaic GPU kernels need one jitted XLA execution: op-by-op
(eager) autodiff keeps dispatching XLA work while an interpreted kernel's
callbacks run their own XLA computations, which deadlocked the 2-core CPU
host's thread pool. Every program here is jitted.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.shapes import Shape
from lowprec_jax.formats import Fp8, Int8Block
from lowprec_jax.ops import (
  available_implementations,
  census,
  quantized_dot_general,
)
from tests.helpers import F32_EPS, all_dots, normal, rel_err
from tests.implementation_cases import ImplementationTestBase, cases
from tests.ops.reference import KERNEL_RECIPES, abs_dot, fwd_only


def dims_of(x) -> tuple:
  """A Linear: x's last axis against w's first."""
  return (((x.ndim - 1,), (0,)), ((), ()))


def linear(x, w, config, implementation=None, seed=None):
  """``quantized_dot_general`` of a Linear (``dims_of(x)``)."""
  kw = dict(config=config, implementation=implementation, seed=seed)
  return quantized_dot_general(x, w, dims_of(x), **kw)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _vjp(lhs, rhs, g, config, implementation):
  f = lambda a, b: linear(a, b, config, implementation, seed=7)
  out, vjp = jax.vjp(f, lhs, rhs)
  return (out, *vjp(g))


def kernel_calls(jaxpr) -> list[tuple[str, int]]:
  """(name, number of outputs) of every ``lpj_*`` kernel, recursively."""
  found = []
  for eqn in jaxpr.eqns:
    name = eqn.params.get("name")
    if isinstance(name, str) and name.startswith("lpj_"):
      found.append((name, len(eqn.outvars)))
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)
      if hasattr(inner, "eqns"):
        found += kernel_calls(inner)
  return found


# Requests no kernel implementation serves, and the reason they give.
UNSUPPORTED = {
  "mixed_blocks": ((Int8Block(32), Int8Block(128)), "one block size"),
  "row_by_tensor": (
    (Fp8.per_row(), Fp8.per_tensor()),
    r"\(1, None\) x (b_tile=)?None",
  ),
}


class QuantizedDotTestBase(ImplementationTestBase):
  """Tests of one implementation of ``quantized_dot_general``."""

  implementation: str
  shape: Shape  # x (batch, m, k) (2-D for batch 1), w (k, n)
  int8_bitwise: bool  # INT8 recipes equal "xla" bit for bit
  rel_err_budget: float | None = None  # else the 2 (k + 4) u bound
  bf16_recipes: tuple[str, ...] = ()  # bit for bit with bf16 inputs
  # recipe -> role -> (lhs dtype, rhs dtype, accumulator) of the census
  census_dots: dict[str, dict[str, tuple[str, str, str]]]
  # recipe -> every lpj_* kernel of forward + backward: (name, outputs)
  expected_kernels: dict[str, list[tuple[str, int]]]

  def inputs(self, dtype, seed=0):
    s = self.shape
    lead = (s.batch, s.m) if s.batch > 1 else (s.m,)
    lhs = normal((*lead, s.k), dtype, seed=seed)
    rhs = normal((s.k, s.n), dtype, seed=seed + 1)
    g = normal((*lead, s.n), dtype, seed=seed + 2)
    return lhs, rhs, g

  def against_xla(self, recipe, dtype, seed=0):
    """(lhs, rhs, g, implementation's (out, dlhs, drhs), "xla"'s)."""
    lhs, rhs, g = self.inputs(dtype, seed)
    config = KERNEL_RECIPES[recipe]
    got = _vjp(lhs, rhs, g, config, self.implementation)
    return lhs, rhs, g, got, _vjp(lhs, rhs, g, config, "xla")

  @pytest.mark.parametrize("recipe", list(KERNEL_RECIPES))
  def test_matches_xla(self, recipe):
    lhs, rhs, g, got, want = self.against_xla(recipe, jnp.float32)
    if recipe.startswith("jetfire") and self.int8_bitwise:
      for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      return
    if self.rel_err_budget is not None:
      for a, b in zip(got, want):
        assert rel_err(a, b) <= self.rel_err_budget
      return
    s = self.shape
    scales = abs_dot(lhs, rhs, dims_of(lhs), g)
    # k of the forward, dlhs and drhs GEMMs: K, N and the canonical M.
    for a, b, scale, k in zip(got, want, scales, (s.k, s.n, s.batch * s.m)):
      bound = 2 * (k + 4) * F32_EPS * 1.25 * np.asarray(scale, np.float64)
      diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
      assert np.all(diff <= bound), float(np.max(diff - bound))

  @cases("recipe", "bf16_recipes")
  def test_bf16_inputs_bitwise(self, recipe):
    *_, got, want = self.against_xla(recipe, jnp.bfloat16, seed=3)
    for a, b in zip(got, want):
      assert a.dtype == jnp.bfloat16
      np.testing.assert_array_equal(a, b)

  @cases("recipe", "census_dots", keys=True)
  def test_census_shows_the_kernels(self, recipe):
    lhs, rhs, _ = self.inputs(jnp.float32)
    config, impl = KERNEL_RECIPES[recipe], self.implementation
    loss = lambda a, b: jnp.sum(linear(a, b, config, impl, seed=1) ** 2)
    report = census(jax.grad(loss, argnums=(0, 1)), lhs, rhs)
    roles = ("fwd", "dlhs", "drhs")
    assert {r.role for r in report.records} == set(roles)
    assert [report.total(role=r) for r in roles] == [1, 1, 1]
    for r in report.records:
      assert r.implementation == self.implementation and r.count == 1
      dtypes = (r.lhs_dtype, r.rhs_dtype, r.accumulator)
      assert dtypes == self.census_dots[recipe][r.role]

  @cases("recipe", "expected_kernels", keys=True)
  def test_quantizes_and_multiplies_with_the_kernels(self, recipe):
    """Operands through the quantize kernels, each quantized once by a
    kernel writing both layouts where its tile has one (x and x^T, w as
    stored and w^T, g and g^T); the three GEMMs in the GEMM kernel, none in
    XLA."""
    lhs, rhs, g = self.inputs(jnp.float32)
    jaxpr = jax.make_jaxpr(_vjp.__wrapped__, static_argnums=(3, 4))(
      lhs, rhs, g, KERNEL_RECIPES[recipe], self.implementation
    )
    want = sorted(self.expected_kernels[recipe])
    assert sorted(kernel_calls(jaxpr.jaxpr)) == want
    if recipe.startswith("jetfire"):  # any dot is a kernel's int8 dot
      dots = all_dots(jaxpr.jaxpr)
      assert all(str(d.invars[0].aval.dtype) == "int8" for d in dots)

  def test_is_registered(self):
    assert self.implementation in available_implementations()

  @pytest.mark.parametrize("request_name", list(UNSUPPORTED))
  def test_unsupported_requests_name_the_reason(self, request_name):
    formats, match = UNSUPPORTED[request_name]
    config = fwd_only(request_name, *formats)
    lhs, rhs, _ = self.inputs(jnp.float32)
    with pytest.raises(NotImplementedError, match=match):
      jax.eval_shape(
        lambda a, b: linear(a, b, config, self.implementation), lhs, rhs
      )
