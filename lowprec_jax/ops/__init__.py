"""Quantized matmuls with custom VJPs, their configs, recipes and census.

Public API: :func:`quantized_dot_general`, :class:`DotQuantConfig`,
:class:`GemmQuant`, :class:`OperandQuant`, the recipes (:func:`bf16`,
:func:`jetfire_int8`, :func:`fp8_current`, :func:`fp8_block`,
:func:`coat_fp8`, :func:`get_recipe`, ``RECIPES``), :func:`census` and
INT4 training (:func:`int4_dot_general`, :class:`Int4Config`,
:func:`int4_hq`, :func:`int4_hq_b32`, :func:`int4_hq_b16`,
:func:`int4_hq_released`);
``RESIDUAL_NAMES``; and the non-linear ops that save a quantized copy of
their input for the backward pass, :func:`layer_norm` and :func:`gelu`
(``COAT_SAVED_ACTIVATIONS``, ``ACTIVATION_RESIDUAL_NAMES``).
"""

from lowprec_jax.ops._activations import (
  ACTIVATION_RESIDUAL_NAMES as ACTIVATION_RESIDUAL_NAMES,
)
from lowprec_jax.ops._activations import gelu as gelu
from lowprec_jax.ops._activations import layer_norm as layer_norm
from lowprec_jax.ops._census import Census as Census
from lowprec_jax.ops._census import GemmRecord as GemmRecord
from lowprec_jax.ops._census import census as census
from lowprec_jax.ops._config import DotQuantConfig as DotQuantConfig
from lowprec_jax.ops._config import GemmQuant as GemmQuant
from lowprec_jax.ops._config import OperandQuant as OperandQuant
from lowprec_jax.ops._dispatch import available as available_implementations
from lowprec_jax.ops._dot_general import RESIDUAL_NAMES as RESIDUAL_NAMES
from lowprec_jax.ops._dot_general import (
  quantized_dot_general as quantized_dot_general,
)
from lowprec_jax.ops._int4_config import Int4Config as Int4Config
from lowprec_jax.ops._int4_config import int4_hq as int4_hq
from lowprec_jax.ops._int4_config import int4_hq_b16 as int4_hq_b16
from lowprec_jax.ops._int4_config import int4_hq_b32 as int4_hq_b32
from lowprec_jax.ops._int4_config import int4_hq_released as int4_hq_released
from lowprec_jax.ops._int4_dot import int4_dot_general as int4_dot_general
from lowprec_jax.ops._recipes import (
  COAT_SAVED_ACTIVATIONS as COAT_SAVED_ACTIVATIONS,
)
from lowprec_jax.ops._recipes import RECIPES as RECIPES
from lowprec_jax.ops._recipes import bf16 as bf16
from lowprec_jax.ops._recipes import coat_fp8 as coat_fp8
from lowprec_jax.ops._recipes import fp8_block as fp8_block
from lowprec_jax.ops._recipes import fp8_current as fp8_current
from lowprec_jax.ops._recipes import get_recipe as get_recipe
from lowprec_jax.ops._recipes import jetfire_int8 as jetfire_int8

__all__ = (
  "ACTIVATION_RESIDUAL_NAMES",
  "COAT_SAVED_ACTIVATIONS",
  "RECIPES",
  "RESIDUAL_NAMES",
  "Census",
  "DotQuantConfig",
  "GemmQuant",
  "GemmRecord",
  "Int4Config",
  "OperandQuant",
  "available_implementations",
  "bf16",
  "census",
  "coat_fp8",
  "fp8_block",
  "fp8_current",
  "gelu",
  "get_recipe",
  "int4_dot_general",
  "int4_hq",
  "int4_hq_b16",
  "int4_hq_b32",
  "int4_hq_released",
  "jetfire_int8",
  "layer_norm",
  "quantized_dot_general",
)
