"""Recipes hold the documented formats; the census reports what ran."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from lowprec_jax.formats import Fp8, Int8Block
from lowprec_jax.ops import (
  RECIPES,
  census,
  get_recipe,
  jetfire_int8,
  quantized_dot_general,
)
from tests.helpers import normal
from tests.ops.reference import fwd_only, gemm


def test_recipes_are_what_the_docs_say():
  jf = get_recipe("jetfire_int8")
  assert jf.fwd.lhs.format == jf.fwd.rhs.format == Int8Block(32)
  assert jf.dlhs.lhs.rounding == jf.drhs.lhs.rounding == "stochastic"
  assert jf.fwd.lhs.rounding == "nearest" and jf.needs_seed
  fc = get_recipe("fp8_current")
  assert fc.fwd.lhs.format == Fp8.per_tensor("e4m3")
  assert fc.dlhs.lhs.format == fc.drhs.lhs.format == Fp8.per_tensor("e5m2")
  assert not fc.needs_seed
  fb = get_recipe("fp8_block")
  assert fb.fwd.lhs.format == Fp8.groups(
    128
  ) and fb.fwd.rhs.format == Fp8.blocks(128)
  assert not get_recipe("bf16").quantized
  assert jetfire_int8(128).name == "jetfire_int8_b128"
  coat = get_recipe("coat_fp8")
  assert (coat.fwd, coat.dlhs, coat.drhs) == (fc.fwd, fc.dlhs, fc.drhs)
  assert coat.name == "coat_fp8"
  assert set(RECIPES) == {
    "bf16",
    "jetfire_int8",
    "fp8_current",
    "fp8_block",
    "coat_fp8",
    "int4_hq",
    "int4_hq_b32",
    "int4_hq_b16",
    "int4_hq_released",
  }
  assert "fwd: int8_block32 x int8_block32" in jf.describe()
  hq, ours = get_recipe("int4_hq"), get_recipe("int4_hq_b32")
  assert (hq.scale, hq.split, hq.sampling) == ("lsq", "faithful", "leverage")
  assert (ours.scale, ours.block, ours.split, ours.sampling) == (
    "absmax",
    32,
    "full",
    "all",
  )
  assert hq.needs_seed and "Hadamard along K" in hq.describe()
  released = get_recipe("int4_hq_released")
  assert released == dataclasses.replace(
    hq, name="int4_hq_released", sampling="all"
  )
  b16 = get_recipe("int4_hq_b16")
  assert (b16.block, b16.clip_candidates, b16.split, b16.sampling) == (
    16,
    (1.0, 0.9, 0.8, 0.7),
    "full",
    "all",
  )


DIMS = (((1,), (0,)), ((), ()))


def _two_layers(config):
  def f(x, w1, w2):
    h = quantized_dot_general(x, w1, DIMS, config=config, seed=1)
    y = quantized_dot_general(jax.nn.relu(h), w2, DIMS, config=config, seed=2)
    return jnp.sum(y**2)

  return f


def test_census_counts_and_dtypes_forward_and_backward():
  x, w1, w2 = normal((64, 96)), normal((96, 128), seed=1), normal((128, 32))
  f = _two_layers("fp8_current")
  fwd = census(f, x, w1, w2)
  assert fwd.total(role="fwd") == 2 and fwd.total() == 2
  full = census(jax.jit(jax.grad(f, argnums=(0, 1, 2))), x, w1, w2)
  assert [full.total(role=r) for r in ("fwd", "dlhs", "drhs")] == [2, 2, 2]
  assert full.total(quantized=False) == 0
  dlhs = [r for r in full.records if r.role == "dlhs"]
  assert {(r.lhs_dtype, r.rhs_dtype, r.accumulator) for r in dlhs} == {
    ("float8_e5m2", "float8_e4m3fn", "float32")
  }
  assert {r.implementation for r in full.records} == {"xla"}
  text = str(full)
  assert "role" in text and "e5m2_tensor" in text and "1x64x128x96" in text
  assert "fwd" in full.summary() and "float8_e5m2" in full.summary()


def test_census_reports_unquantized_dots_honestly():
  x, w1, w2 = normal((64, 96)), normal((96, 128), seed=1), normal((128, 32))
  report = census(jax.grad(_two_layers("bf16"), argnums=(1, 2)), x, w1, w2)
  assert report.total(quantized=True) == 0
  assert report.total(quantized=False) == 5  # 2 fwd + 3 needed grads
  assert {r.lhs_dtype for r in report.records} == {"float32"}


def test_census_notes_requantized_residuals_and_rounding():
  x, w1, w2 = normal((64, 96)), normal((96, 128), seed=1), normal((128, 32))
  rep = census(jax.grad(_two_layers("fp8_block"), argnums=1), x, w1, w2)
  drhs = [r for r in rep.records if r.role == "drhs"]
  # The (K, N) weight's gradient is x^T . g^T: x is the lhs.
  assert all(r.lhs_format == "e4m3_1x128~requantized" for r in drhs)
  rep = census(jax.grad(_two_layers("jetfire_int8"), argnums=1), x, w1, w2)
  assert {r.lhs_format for r in rep.records if r.role == "dlhs"} == {
    "int8_block32_sr"
  }


@pytest.mark.parametrize("length", [1, 3])
def test_census_multiplies_scanned_layers(length):
  def layers(x, ws):
    def body(h, w):
      y = quantized_dot_general(h, w, DIMS, config="jetfire_int8", seed=3)
      return y, None

    return jax.lax.scan(body, x, ws)[0].sum()

  x, ws = normal((64, 96)), normal((length, 96, 96), seed=1)
  rep = census(jax.grad(layers), x, ws)
  assert [rep.total(role=r) for r in ("fwd", "dlhs", "drhs")] == [length] * 3


@pytest.mark.parametrize("drhs", ["fp8_block", "per_tensor"])
def test_mosaic_census_records_who_requantized(drhs):
  """fp8_block's drhs (x^T . g^T for a (K, N) weight) requantizes the saved
  1 x 128 x as 128 x 1 groups in one Mosaic kernel. A drhs wanting x^T per
  tensor dequantizes the 1 x 128 groups first, which has no Mosaic kernel:
  the jnp reference does it (the same bits) and the census says so."""
  x, w = normal((64, 256)), normal((256, 128), seed=1)
  config = get_recipe("fp8_block")
  if drhs == "per_tensor":  # g^T (E5M2) and x^T (E4M3) per tensor
    spec = gemm(Fp8.per_tensor("e5m2"), Fp8.per_tensor("e4m3"))
    config = dataclasses.replace(config, name="blocks_then_tensor", drhs=spec)

  def loss(x, w):
    kw = dict(config=config, implementation="mosaic")
    return jnp.sum(quantized_dot_general(x, w, DIMS, **kw))

  rep = census(jax.jit(jax.grad(loss, argnums=(0, 1))), x, w)
  quantizers = {r.role: (r.lhs_quantizer, r.rhs_quantizer) for r in rep.records}
  requantizer = {"fp8_block": "mosaic", "per_tensor": "xla"}[drhs]
  assert quantizers == {
    "fwd": ("mosaic", "mosaic"),
    "dlhs": ("mosaic", "residual"),
    "drhs": (f"{requantizer}->mosaic", "mosaic"),
  }
  substituted = [r.role for r in rep.records if r.substituted]
  assert substituted == ([] if drhs == "fp8_block" else ["drhs"])
  assert ("[quantized by xla->mosaic x mosaic]" in rep.summary()) == bool(
    substituted
  )
  assert {r.implementation for r in rep.records} == {"mosaic"}


def test_implementation_sequences_are_tried_in_the_given_order():
  mixed = fwd_only("mixed_blocks", Int8Block(32), Int8Block(64))
  x, w = normal((8, 64)), normal((64, 32), seed=1)
  kw = dict(config=mixed, implementation=("mosaic", "pallas", "xla"))
  rep = census(lambda x, w: quantized_dot_general(x, w, DIMS, **kw), x, w)
  assert [r.implementation for r in rep.records] == ["xla"]
  kw["implementation"] = ["mosaic", "pallas"]  # no "xla" to fall back on
  with pytest.raises(
    NotImplementedError,
    match=r"none of implementation=\('mosaic', 'pallas'\) can run config "
    r"'mixed_blocks': mosaic: fwd .* one block size .* \| pallas: fwd",
  ):
    quantized_dot_general(x, w, DIMS, **kw)
