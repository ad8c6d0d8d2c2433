"""``quantized_dot_general(..., implementation="mosaic")`` against ``"xla"``.

The ``"mosaic"`` implementation quantizes with the Mosaic quantize kernels
(bit-equal to ``"xla"``'s jnp quantizer; every tile of the recipes has
one) and multiplies with the Hopper kernels: through the Mosaic GPU
interpreter on CPU, compiled on a GPU.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.formats import Fp8, Int8Block
from lowprec_jax.ops import (
  DotQuantConfig,
  GemmQuant,
  OperandQuant,
  _dispatch,
  census,
  fp8_current,
  jetfire_int8,
  quantized_dot_general,
)
from tests.helpers import normal, rel_err
from tests.ops.reference import KERNEL_RECIPES

ON_GPU = jax.default_backend() == "gpu"
M, K, N = (1024, 2048, 1536) if ON_GPU else (128, 256, 128)
DIMS = (((1,), (0,)), ((), ()))
RECIPES = KERNEL_RECIPES


@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grads(config, impl, x, w):
  # Jitted: one XLA execution. Op-by-op (eager) autodiff keeps dispatching
  # XLA work while an interpreted kernel's callbacks run their own XLA
  # computations, which deadlocked the 2-core CPU host's thread pool.
  def loss(x, w):
    out = quantized_dot_general(
      x, w, DIMS, config=config, implementation=impl, seed=7
    )
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

  out = quantized_dot_general(
    x, w, DIMS, config=config, implementation=impl, seed=7
  )
  return (out, *jax.grad(loss, argnums=(0, 1))(x, w))


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_forward_and_gradients_match_xla(recipe):
  config = RECIPES[recipe]
  x, w = normal((M, K), seed=1), normal((K, N), seed=2)
  got = _value_and_grads(config, "mosaic", x, w)
  want = _value_and_grads(config, "xla", x, w)
  for g, r in zip(got, want):
    if recipe.startswith("jetfire") and not ON_GPU:
      # Same quantization, exact int32 partial sums, the same fp32
      # promotion in the same order: the same bits.
      np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
    else:
      # FP8 (and any GPU run): the codes and scales are identical, only the
      # f32 summation order inside a chunk differs (interpreter: numpy's
      # matmul; GPU: wgmma, whose FP8 accumulator keeps ~14 bits, and
      # FMA-contracted promotion). Relative error of the sum of n terms of
      # mixed signs is ~sqrt(n) u in f32 (~1e-6 here); on a GPU 2^-7 bounds
      # the Hopper FP8 accumulator (see test_mosaic_fp8_matmul).
      assert rel_err(g, r) <= (2.0**-7 if ON_GPU else 1e-5)


def test_census_records_mosaic_gemms():
  x, w = normal((M, K), seed=3), normal((K, N), seed=4)

  def loss(x, w):
    return quantized_dot_general(
      x, w, DIMS, config=fp8_current(), implementation="mosaic"
    ).sum()

  report = census(jax.grad(loss, argnums=(0, 1)), x, w)
  assert {r.implementation for r in report.records} == {"mosaic"}
  assert [report.total(role=r) for r in ("fwd", "dlhs", "drhs")] == [1, 1, 1]
  dlhs = [r for r in report.records if r.role == "dlhs"]
  assert (dlhs[0].lhs_dtype, dlhs[0].rhs_dtype, dlhs[0].accumulator) == (
    "float8_e5m2",
    "float8_e4m3fn",
    "float32",
  )


@pytest.mark.parametrize(
  "recipe, kernels",
  [
    ("jetfire_int8", {"quantize_int8", "quantize_int8_transpose"}),
    ("fp8_current", {"quantize_fp8"}),
    ("fp8_block", {"quantize_fp8", "quantize_fp8_groups"}),
  ],
)
def test_quantizes_with_the_mosaic_kernels(recipe, kernels):
  """Forward operands through the quantize kernel; g of the INT8 recipes
  through the fused quantize+transpose kernel (one quantization, both
  backward GEMMs)."""
  x, w = jnp.ones((M, K)), jnp.ones((K, N))
  text = str(
    jax.make_jaxpr(_value_and_grads, static_argnums=(0, 1))(
      RECIPES[recipe], "mosaic", x, w
    )
  )
  # jax numbers repeated kernel names (..._groups1): match the base names.
  kinds = r"quantize_(?:int8|fp8)(?:_transpose|_groups|_rows)?"
  names = set(re.findall(rf"lpj_mosaic_({kinds})", text))
  assert names == kernels


def test_none_picks_xla_on_cpu_and_mosaic_is_registered():
  assert "mosaic" in _dispatch.available()
  if not ON_GPU:
    assert _dispatch.resolve(None, jetfire_int8()).name == "xla"


def test_unsupported_requests_name_the_reason():
  mixed_blocks = DotQuantConfig(
    name="mixed_blocks",
    fwd=GemmQuant(
      lhs=OperandQuant(format=Int8Block(32)),
      rhs=OperandQuant(format=Int8Block(128)),
    ),
  )
  with pytest.raises(NotImplementedError, match="one block size"):
    _dispatch.resolve("mosaic", mixed_blocks)
  row_by_tensor = DotQuantConfig(
    name="row_by_tensor",
    fwd=GemmQuant(
      lhs=OperandQuant(format=Fp8.per_row()),
      rhs=OperandQuant(format=Fp8.per_tensor()),
    ),
  )
  with pytest.raises(NotImplementedError, match=r"\(1, None\) x None"):
    _dispatch.resolve("mosaic", row_by_tensor)
