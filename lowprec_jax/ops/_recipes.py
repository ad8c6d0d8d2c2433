"""Recipes: named functions returning a :class:`DotQuantConfig`.

=============  ==============================  ==============================  =========
recipe         forward (x, w)                  gradient g                      rounding
=============  ==============================  ==============================  =========
bf16           not quantized                   not quantized                   -
jetfire_int8   INT8 32x32 blocks, both         INT8 32x32 blocks, once for     RTN fwd,
                                               dlhs and drhs                   SR on g
fp8_current    E4M3 per-tensor, both           E5M2 per-tensor                 RTN
fp8_block      x: E4M3 1x128, w: E4M3 128x128  E4M3 1x128 along each GEMM's K  RTN
coat_fp8       E4M3 per-tensor, both           E5M2 per-tensor                 RTN
int4_hq        INT4 LSQ per-tensor after a     bit split (INT4 x 2), leverage  RTN fwd,
               Hadamard rotation, both         sampled rows                    SR on g
int4_hq_b32    INT4 32x32 blocks after a       bit split, every row (one INT8  RTN fwd,
               Hadamard rotation, both         GEMM on 14 hi + lo)             SR on g
int4_hq_b16    INT4 16x16 blocks, clip-searched the same                       RTN fwd,
               scales, after a rotation, both                                  SR on g
int4_hq_       as int4_hq                      bit split, every row (as the    RTN fwd,
released                                       released kernels run it)        SR on g
=============  ==============================  ==============================  =========

The INT4 recipes are :class:`~lowprec_jax.ops.Int4Config` objects (see
``_int4_config``), run by :func:`~lowprec_jax.ops.int4_dot_general`.

Square blocks and per-tensor scales transpose exactly, so those recipes reuse
the forward codes in both backward GEMMs. ``fp8_block`` (DeepSeek-V3's
scheme) groups x along K in the forward but along M for the weight gradient:
there the saved 1x128 x is dequantized and requantized as 1x128 groups of
x^T, as DeepSeek-V3 does; g is quantized separately for dlhs and drhs.
"""

import dataclasses
from collections.abc import Callable

from lowprec_jax.formats._format import Fp8, Int8Block
from lowprec_jax.ops._config import DotQuantConfig, GemmQuant, OperandQuant
from lowprec_jax.ops._int4_config import (
  Int4Config,
  int4_hq,
  int4_hq_b16,
  int4_hq_b32,
  int4_hq_released,
)


def bf16() -> DotQuantConfig:
  """No quantization: every GEMM is a plain ``lax.dot_general``."""
  return DotQuantConfig(name="bf16")


def jetfire_int8(block: int = 32) -> DotQuantConfig:
  """Jetfire: INT8 square blocks for all three GEMMs, SR on gradients.

  Args:
    block: 32 is faithful to the paper; 64 or 128 suit Hopper.
  """
  rtn = OperandQuant(format=Int8Block(block))
  sr = OperandQuant(format=Int8Block(block), rounding="stochastic")
  return DotQuantConfig(
    name="jetfire_int8" if block == 32 else f"jetfire_int8_b{block}",
    fwd=GemmQuant(lhs=rtn, rhs=rtn),
    dlhs=GemmQuant(lhs=sr, rhs=rtn),
    drhs=GemmQuant(lhs=sr, rhs=rtn),
  )


def fp8_current() -> DotQuantConfig:
  """E4M3 forward, E5M2 gradients, per-tensor scales from the current amax."""
  e4m3 = OperandQuant(format=Fp8.per_tensor("e4m3"))
  e5m2 = OperandQuant(format=Fp8.per_tensor("e5m2"))
  return DotQuantConfig(
    name="fp8_current",
    fwd=GemmQuant(lhs=e4m3, rhs=e4m3),
    dlhs=GemmQuant(lhs=e5m2, rhs=e4m3),
    drhs=GemmQuant(lhs=e5m2, rhs=e4m3),
  )


def fp8_block(size: int = 128) -> DotQuantConfig:
  """DeepSeek-V3 style: 1 x 128 activations and gradients, 128 x 128 weights.

  All E4M3 (fine-grained scales make E5M2's range unnecessary for g).
  """
  groups = OperandQuant(format=Fp8.groups(size, "e4m3"))
  blocks = OperandQuant(format=Fp8.blocks(size, "e4m3"))
  return DotQuantConfig(
    name="fp8_block" if size == 128 else f"fp8_block{size}",
    fwd=GemmQuant(lhs=groups, rhs=blocks),
    dlhs=GemmQuant(lhs=groups, rhs=blocks),
    drhs=GemmQuant(lhs=groups, rhs=groups),
  )


COAT_SAVED_ACTIVATIONS = Fp8.groups(16, "e4m3", scale_storage="bfloat16")
"""COAT's format for the inputs of non-linear ops saved for the backward pass:
E4M3 in 1 x 16 groups along the feature axis, scales stored in bf16 (use with
:func:`lowprec_jax.ops.layer_norm` and :func:`lowprec_jax.ops.gelu`)."""


def coat_fp8() -> DotQuantConfig:
  """COAT's GEMMs: E4M3 per-tensor forward, E5M2 per-tensor gradients.

  The GEMMs equal ``fp8_current``'s (COAT computes the per-tensor scale in two
  stages, 1 x 16 group maxima then their maximum: the same value). The rest of
  COAT's precision flow is in the model: norms and activations save their
  inputs as :data:`COAT_SAVED_ACTIVATIONS`, attention and the residual stream
  stay bf16 (see ``train/model.py``).
  """
  return dataclasses.replace(fp8_current(), name="coat_fp8")


RECIPES: dict[str, Callable[[], DotQuantConfig | Int4Config]] = {
  "bf16": bf16,
  "jetfire_int8": jetfire_int8,
  "fp8_current": fp8_current,
  "fp8_block": fp8_block,
  "coat_fp8": coat_fp8,
  "int4_hq": int4_hq,
  "int4_hq_b32": int4_hq_b32,
  "int4_hq_b16": int4_hq_b16,
  "int4_hq_released": int4_hq_released,
}


def get_recipe(
  recipe: "str | DotQuantConfig | Int4Config",
) -> DotQuantConfig | Int4Config:
  """Returns the config for a recipe name (or passes a config through)."""
  if isinstance(recipe, DotQuantConfig | Int4Config):
    return recipe
  if recipe not in RECIPES:
    raise ValueError(
      f"recipe must be one of {sorted(RECIPES)}, a DotQuantConfig or an "
      f"Int4Config, got {recipe!r}"
    )
  return RECIPES[recipe]()
