"""AdamW with quantized states: ``adamw_fp8`` (COAT), ``adamw_8bit``, ``adamw_4bit``.

Each alias is ``optax.adamw`` with the moments of large matrices stored
quantized. Its positional arguments are ``optax.adamw``'s, so
``optax.inject_hyperparams`` and schedules work unchanged (pass
``static_args=("quantize_mask",)`` if the quantize mask is a callable, as for
``mask``; without it the error says so). The recipe is ``optax.adamw``'s
chain with its first link replaced::

    chain(
      scale_by_adam_quantized(b1, b2, eps, eps_root, mu_dtype,
                              mu_format=..., nu_format=..., quantize_mask=...),
      add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate),
    )

so ``optax.tree.get(state, "mu")`` and ``optax.tree.set`` work as for
``optax.adamw``.
"""

from typing import Any

import jax
import optax

from lowprec_jax._implementations import ImplementationLike
from lowprec_jax.optim import _masks, _transform
from lowprec_jax.optim import _moment_formats as mf

_FP8_E4M3 = mf.Fp8Dre(dtype="e4m3")
_DYNAMIC8_SIGNED = mf.Codebook(bits=8, map="dynamic", signed=True, group=256)
_DYNAMIC8_UNSIGNED = mf.Codebook(bits=8, map="dynamic", signed=False, group=256)
_DYNAMIC4_SIGNED = mf.Codebook(bits=4, map="dynamic", signed=True, group=128)
_LINEAR4_UNSIGNED = mf.Codebook(bits=4, map="linear", signed=False, group=128)


def adamw_quantized(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | None = None,
  *,
  nesterov: bool = False,
  mu_format: mf.MomentFormat | None,
  nu_format: mf.MomentFormat | None,
  quantize_mask: Any | None = None,
  implementation: ImplementationLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW whose moments are stored in ``mu_format`` / ``nu_format``.

  The update is ``optax.adamw``'s,
  :math:`-\eta_t (\hat m_t / (\sqrt{\hat v_t + \bar\varepsilon} +
  \varepsilon) + \lambda \theta)`, with the moments of the leaves selected
  by ``quantize_mask`` kept quantized between steps (see
  :func:`scale_by_adam_quantized`) and the other leaves' moments in
  ``mu_dtype`` / the parameter dtype, exactly as ``optax.adamw``.

  Args:
    learning_rate: a scalar or schedule (:math:`\eta_t`).
    b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov: as in
      ``optax.adamw`` (``mu_dtype`` applies to full-precision leaves).
    mu_format: storage of the first moment of quantized leaves.
    nu_format: storage of the second moment of quantized leaves.
    quantize_mask: tree of bools or ``params -> tree of bools``; True means
      quantized states. None: :func:`default_quantize_mask` (ndim >= 2,
      >= 4096 elements, not an embedding or the LM head).
    implementation: ``"xla"``, ``"pallas"``, an implementation, a sequence
      of them tried in order, or None (see :func:`scale_by_adam_quantized`).
  """
  return optax.chain(
    _transform.scale_by_adam_quantized(
      b1,
      b2,
      eps,
      eps_root,
      mu_dtype,
      mu_format=mu_format,
      nu_format=nu_format,
      quantize_mask=_masks.default_quantize_mask
      if quantize_mask is None
      else quantize_mask,
      nesterov=nesterov,
      implementation=implementation,
    ),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )


def adamw_fp8(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | None = None,
  *,
  nesterov: bool = False,
  mu_format: mf.MomentFormat | None = _FP8_E4M3,
  nu_format: mf.MomentFormat | None = _FP8_E4M3,
  quantize_mask: Any | None = None,
  implementation: ImplementationLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  """COAT's FP8 AdamW: both moments E4M3 with dynamic range expansion.

  Groups of 128 over the flattened parameter, k on a 1/16 grid targeting
  ``448^2/2``, centre ``sqrt(max min)`` (zeros excluded); 2.1875 bytes of
  state per quantized parameter (``Fp8Dre(compact=True)``: 2.0625) against 8
  for fp32 AdamW. Arguments as :func:`adamw_quantized`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from lowprec_jax.optim import adamw_fp8
    >>> params = {"w": jnp.ones((64, 128))}
    >>> tx = adamw_fp8(1e-3, quantize_mask=lambda p: {"w": True})
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones((64, 128))}, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Xi et al., "COAT: Compressing Optimizer states and Activation for
    memory-efficient FP8 Training", ICLR 2025.
  """
  return adamw_quantized(
    learning_rate=learning_rate,
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=mu_dtype,
    weight_decay=weight_decay,
    mask=mask,
    nesterov=nesterov,
    mu_format=mu_format,
    nu_format=nu_format,
    quantize_mask=quantize_mask,
    implementation=implementation,
  )


def adamw_8bit(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | None = None,
  *,
  nesterov: bool = False,
  mu_format: mf.MomentFormat | None = _DYNAMIC8_SIGNED,
  nu_format: mf.MomentFormat | None = _DYNAMIC8_UNSIGNED,
  quantize_mask: Any | None = None,
  implementation: ImplementationLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  """8-bit AdamW (bitsandbytes' scheme): dynamic tree maps, blocks of 256.

  First moment on the signed dynamic map, second on the unsigned one, each
  block scaled by its absmax; 2.03125 bytes per quantized parameter.
  Arguments as :func:`adamw_quantized`.

  References:
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR
    2022.
  """
  return adamw_quantized(
    learning_rate=learning_rate,
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=mu_dtype,
    weight_decay=weight_decay,
    mask=mask,
    nesterov=nesterov,
    mu_format=mu_format,
    nu_format=nu_format,
    quantize_mask=quantize_mask,
    implementation=implementation,
  )


def adamw_4bit(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | None = None,
  *,
  nesterov: bool = False,
  mu_format: mf.MomentFormat | None = _DYNAMIC4_SIGNED,
  nu_format: mf.MomentFormat | None = _LINEAR4_UNSIGNED,
  quantize_mask: Any | None = None,
  implementation: ImplementationLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  """4-bit AdamW: signed 4-bit dynamic map for m, zero-free linear map for v.

  Blocks of 128 with absmax scaling, two codes per byte; 1.0625 bytes per
  quantized parameter. The second moment has no zero code: a v rounded to
  zero would make the step ``m / eps`` (the "zero-point problem"); the
  linear map ``j/16, j = 1..16`` at worst over-estimates v, shrinking the
  step. Arguments as :func:`adamw_quantized`.

  References:
    Li et al., "Memory Efficient Optimizers with 4-bit States", NeurIPS 2023
    (block 128, dynamic exponent map for m, zero-free map for v).
  """
  return adamw_quantized(
    learning_rate=learning_rate,
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=mu_dtype,
    weight_decay=weight_decay,
    mask=mask,
    nesterov=nesterov,
    mu_format=mu_format,
    nu_format=nu_format,
    quantize_mask=quantize_mask,
    implementation=implementation,
  )
