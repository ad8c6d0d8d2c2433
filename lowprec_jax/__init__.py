"""lowprec_jax: train Flax models in INT8 and FP8 on NVIDIA GPUs.

Subpackages: :mod:`lowprec_jax.formats` (QTensor, formats, quantizers),
:mod:`lowprec_jax.ops` (quantized_dot_general, configs, recipes, census),
:mod:`lowprec_jax.nn` (Flax modules and model rewriting),
:mod:`lowprec_jax.optim` (optax optimizers with quantized states). The most
used names are re-exported here.
"""

from lowprec_jax import formats as formats
from lowprec_jax import nn as nn
from lowprec_jax import ops as ops
from lowprec_jax import optim as optim
from lowprec_jax.formats import Fp8 as Fp8
from lowprec_jax.formats import Int4 as Int4
from lowprec_jax.formats import Int8Block as Int8Block
from lowprec_jax.formats import QTensor as QTensor
from lowprec_jax.formats import dequantize as dequantize
from lowprec_jax.formats import quantize as quantize
from lowprec_jax.nn import QuantDotGeneral as QuantDotGeneral
from lowprec_jax.nn import QuantLinear as QuantLinear
from lowprec_jax.nn import QuantRule as QuantRule
from lowprec_jax.nn import quantize_model as quantize_model
from lowprec_jax.ops import DotQuantConfig as DotQuantConfig
from lowprec_jax.ops import census as census
from lowprec_jax.ops import get_recipe as get_recipe
from lowprec_jax.ops import quantized_dot_general as quantized_dot_general
from lowprec_jax.optim import adamw_4bit as adamw_4bit
from lowprec_jax.optim import adamw_8bit as adamw_8bit
from lowprec_jax.optim import adamw_fp8 as adamw_fp8
from lowprec_jax.version import __version__ as __version__

__all__ = (
  "DotQuantConfig",
  "Fp8",
  "Int4",
  "Int8Block",
  "QTensor",
  "QuantDotGeneral",
  "QuantLinear",
  "QuantRule",
  "__version__",
  "adamw_4bit",
  "adamw_8bit",
  "adamw_fp8",
  "census",
  "dequantize",
  "formats",
  "get_recipe",
  "nn",
  "ops",
  "optim",
  "quantize",
  "quantize_model",
  "quantized_dot_general",
)
