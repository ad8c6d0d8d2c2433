"""Flax integration: quantized dot_general, QuantLinear, rule-based rewrite.

Public API: :class:`QuantDotGeneral`, :class:`QuantState`,
:class:`QuantLinear`, :class:`LayerNorm` (saves a quantized input),
:class:`QuantRule`, :func:`quantize_model`,
:func:`quantized_layers`, :func:`quantizable_paths`, and for Linen
:func:`linen_dot_general_cls`.
"""

from lowprec_jax.nn._dot_general import QuantDotGeneral as QuantDotGeneral
from lowprec_jax.nn._dot_general import QuantState as QuantState
from lowprec_jax.nn._layer_norm import LayerNorm as LayerNorm
from lowprec_jax.nn._linear import QuantLinear as QuantLinear
from lowprec_jax.nn._linen import LinenQuantDotGeneral as LinenQuantDotGeneral
from lowprec_jax.nn._linen import linen_dot_general_cls as linen_dot_general_cls
from lowprec_jax.nn._rules import QuantRule as QuantRule
from lowprec_jax.nn._rules import quantizable_paths as quantizable_paths
from lowprec_jax.nn._rules import quantize_model as quantize_model
from lowprec_jax.nn._rules import quantized_layers as quantized_layers

__all__ = (
  "LayerNorm",
  "LinenQuantDotGeneral",
  "QuantDotGeneral",
  "QuantLinear",
  "QuantRule",
  "QuantState",
  "linen_dot_general_cls",
  "quantizable_paths",
  "quantize_model",
  "quantized_layers",
)
