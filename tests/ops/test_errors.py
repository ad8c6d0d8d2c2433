"""Bad input to quantized_dot_general: clear errors, never a silent fallback."""

import jax.numpy as jnp
import pytest

from lowprec_jax.formats import Fp8, Int8Block
from lowprec_jax.ops import (
  DotQuantConfig,
  GemmQuant,
  OperandQuant,
  jetfire_int8,
  quantized_dot_general,
)
from tests.helpers import raises
from tests.ops.reference import fwd_only, gemm

DIMS = (((1,), (0,)), ((), ()))


def _call(lhs, rhs, dims=DIMS, **kw):
  kw.setdefault("config", "fp8_current")
  return quantized_dot_general(lhs, rhs, dims, **kw)


@pytest.mark.parametrize(
  "lhs, rhs, match",
  [
    (
      jnp.ones((4, 8), jnp.int32),
      jnp.ones((8, 3)),
      r"lhs has shape \(4, 8\) and dtype int32; expected a float32, bfloat16 "
      "or float16 array",
    ),
    (
      jnp.ones((4, 8)),
      jnp.ones((8, 3), jnp.complex64),
      r"rhs has shape \(8, 3\) and dtype complex64",
    ),
    (
      jnp.ones((4, 8)),
      jnp.ones((8, 3), jnp.float8_e4m3fn),
      r"rhs has shape \(8, 3\) and dtype float8_e4m3fn",
    ),
    (
      jnp.ones((4, 8)),
      jnp.ones((9, 3)),
      r"lhs has shape \(4, 8\).*rhs has "
      r"shape \(9, 3\).*must pair",
    ),
  ],
)
def test_bad_operands(lhs, rhs, match):
  with pytest.raises(ValueError, match=match):
    _call(lhs, rhs)


def test_wrong_rank_for_dimension_numbers():
  with raises(
    r"lhs has shape \(8,\) and dtype float32; contracting \+ batch dims "
    r"\(1,\) must be in \[0, 1\)"
  ):
    _call(jnp.ones(8), jnp.ones((8, 3)))


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int32, jnp.float8_e4m3fn, "x"])
def test_bad_preferred_element_type(dtype):
  with pytest.raises(ValueError, match="preferred_element_type must be"):
    _call(jnp.ones((4, 8)), jnp.ones((8, 3)), preferred_element_type=dtype)


def test_unknown_recipe_and_bad_config():
  with pytest.raises(ValueError, match="recipe must be one of"):
    _call(jnp.ones((4, 8)), jnp.ones((8, 3)), config="int3")
  with pytest.raises(ValueError, match="Int8Block.block must be one of"):
    jetfire_int8(48)
  with pytest.raises(ValueError, match="both operands quantized or neither"):
    GemmQuant(lhs=OperandQuant(format=Int8Block()), rhs=OperandQuant())
  with pytest.raises(ValueError, match="both be int8 or both fp8"):
    gemm(Int8Block(), Fp8())
  with pytest.raises(ValueError, match="one scale per contraction element"):
    gemm(Fp8("e4m3", (None, 1)), Fp8())
  with pytest.raises(ValueError, match="GEMM operands take float32 scales"):
    gemm(Fp8.groups(16, scale_storage="bfloat16"), Fp8())
  with pytest.raises(ValueError, match="rounding must be one of"):
    OperandQuant(format=Fp8(), rounding="down")
  with pytest.raises(ValueError, match="DotQuantConfig.fwd must be"):
    DotQuantConfig(fwd="int8")


def test_stochastic_config_needs_a_seed():
  with pytest.raises(ValueError, match="rounds stochastically; pass seed="):
    _call(jnp.ones((4, 8)), jnp.ones((8, 3)), config="jetfire_int8")


def test_implementations_are_explicit():
  x, w = jnp.ones((4, 8)), jnp.ones((8, 3))
  assert _call(x, w, implementation="mosaic").shape == (4, 3)
  with pytest.raises(ValueError, match="implementation must be None or one of"):
    _call(x, w, implementation="cuda")
  assert _call(x, w, implementation="xla").shape == (4, 3)


def test_pallas_names_what_it_cannot_run():
  x, w = jnp.ones((4, 8)), jnp.ones((8, 3))
  mixed_blocks = fwd_only("mixed_blocks", Int8Block(32), Int8Block(64))
  with pytest.raises(
    NotImplementedError,
    match=r"implementation='pallas' cannot run config 'mixed_blocks': fwd "
    r"\(int8_block32 x int8_block64\): the INT8 kernel needs one block size "
    "for both operands, got 32 and 64",
  ):
    _call(x, w, config=mixed_blocks, implementation="pallas")
  row_by_tensor = fwd_only("row_by_tensor", Fp8.per_row(), Fp8.per_tensor())
  with pytest.raises(
    NotImplementedError,
    match=r"fwd \(e4m3_row x e4m3_tensor\): tiles a_tile=\(1, None\) x "
    r"b_tile=None have no FP8 kernel",
  ):
    _call(x, w, config=row_by_tensor, implementation="pallas")
  # The same config runs on "xla", and None picks it on a CPU.
  assert _call(x, w, config=row_by_tensor).shape == (4, 3)


def test_unquantized_config_validates_dimension_numbers_too():
  with pytest.raises(ValueError, match="must pair"):
    _call(jnp.ones((4, 8)), jnp.ones((9, 3)), config="bf16")
