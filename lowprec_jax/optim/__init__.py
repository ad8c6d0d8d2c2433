"""Optax optimizers whose states are stored quantized (COAT FP8, 8-bit, 4-bit).

* Aliases mirroring ``optax.adamw``: :func:`adamw_fp8` (COAT: E4M3 with
  dynamic range expansion), :func:`adamw_8bit` (bitsandbytes' dynamic maps),
  :func:`adamw_4bit`, and :func:`adamw_quantized` for any pair of formats.
* The transform :func:`scale_by_adam_quantized` and its state.
* Moment formats :class:`Fp8Dre` and :class:`Codebook`, the pytree
  :class:`QuantizedMoment`, :func:`quantize_moment`.
* Masks (:func:`quantize_mask`, :func:`default_quantize_mask`,
  :func:`explain_quantize_mask`), shardings
  (:func:`state_partition_specs`, :func:`state_shardings`) and :func:`state_bytes`.
"""

from lowprec_jax.optim._alias import adamw_4bit as adamw_4bit
from lowprec_jax.optim._alias import adamw_8bit as adamw_8bit
from lowprec_jax.optim._alias import adamw_fp8 as adamw_fp8
from lowprec_jax.optim._alias import adamw_quantized as adamw_quantized
from lowprec_jax.optim._masks import (
  default_quantize_mask as default_quantize_mask,
)
from lowprec_jax.optim._masks import (
  explain_quantize_mask as explain_quantize_mask,
)
from lowprec_jax.optim._masks import quantize_mask as quantize_mask
from lowprec_jax.optim._moment_formats import Codebook as Codebook
from lowprec_jax.optim._moment_formats import Fp8Dre as Fp8Dre
from lowprec_jax.optim._moment_formats import MomentFormat as MomentFormat
from lowprec_jax.optim._moment_formats import QuantizedMoment as QuantizedMoment
from lowprec_jax.optim._moment_formats import moment_nbytes as moment_nbytes
from lowprec_jax.optim._moment_formats import quantize_moment as quantize_moment
from lowprec_jax.optim._sharding import state_bytes as state_bytes
from lowprec_jax.optim._sharding import (
  state_partition_specs as state_partition_specs,
)
from lowprec_jax.optim._sharding import state_shardings as state_shardings
from lowprec_jax.optim._transform import (
  ScaleByAdamQuantizedState as ScaleByAdamQuantizedState,
)
from lowprec_jax.optim._transform import (
  scale_by_adam_quantized as scale_by_adam_quantized,
)

__all__ = (
  "Codebook",
  "Fp8Dre",
  "MomentFormat",
  "QuantizedMoment",
  "ScaleByAdamQuantizedState",
  "adamw_4bit",
  "adamw_8bit",
  "adamw_fp8",
  "adamw_quantized",
  "default_quantize_mask",
  "explain_quantize_mask",
  "moment_nbytes",
  "quantize_mask",
  "quantize_moment",
  "scale_by_adam_quantized",
  "state_bytes",
  "state_partition_specs",
  "state_shardings",
)
