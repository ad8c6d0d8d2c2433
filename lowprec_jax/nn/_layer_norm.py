"""LayerNorm whose backward pass keeps a quantized copy of its input."""

import jax.numpy as jnp
from flax import nnx

from lowprec_jax.formats._format import QuantFormat
from lowprec_jax.ops._activations import layer_norm


class LayerNorm(nnx.LayerNorm):
  """``nnx.LayerNorm`` over the last axis via :func:`lowprec_jax.ops.layer_norm`.

  Same parameters, initialisers and forward values as ``nnx.LayerNorm`` (the
  statistics are fp32 and two-pass), so a model can swap it in without
  touching its checkpoints. ``saved`` sets the format of the input kept for
  the backward pass (None keeps the input itself, and still saves less than
  autodiff of ``nnx.LayerNorm``); it can be changed after construction, which
  is how recipes apply COAT's FP8 activations to an existing model.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from lowprec_jax.nn import LayerNorm
    >>> from lowprec_jax.ops import COAT_SAVED_ACTIVATIONS
    >>> ln = LayerNorm(64, saved=COAT_SAVED_ACTIVATIONS, rngs=nnx.Rngs(0))
    >>> ln(jnp.ones((2, 64))).shape
    (2, 64)

  Args:
    num_features: size of the last axis.
    saved: format of the saved input (e.g.
      ``lowprec_jax.ops.COAT_SAVED_ACTIVATIONS``) or None.
    **kwargs: ``nnx.LayerNorm`` arguments; normalisation over the last axis
      only (``reduction_axes`` and ``feature_axes`` of -1, no ``axis_name``).
  """

  def __init__(
    self,
    num_features: int,
    *,
    saved: QuantFormat | None = None,
    rngs: nnx.Rngs,
    **kwargs,
  ):
    for key in ("reduction_axes", "feature_axes"):
      if kwargs.get(key, -1) not in (-1, (-1,)):
        raise ValueError(
          f"LayerNorm normalises the last axis only; got {key}={kwargs[key]!r}"
        )
    if kwargs.get("axis_name") is not None:
      raise ValueError(
        "LayerNorm does not support axis_name (no cross-device "
        "statistics); use nnx.LayerNorm"
      )
    super().__init__(num_features, rngs=rngs, **kwargs)
    self.saved = saved

  def __call__(self, x, *, mask=None):
    if mask is not None:
      raise ValueError("LayerNorm does not support mask; use nnx.LayerNorm")
    scale = self.scale[...] if self.scale is not None else None
    bias = self.bias[...] if self.bias is not None else None
    out_dtype = self.dtype or jnp.result_type(
      x, *(p for p in (scale, bias) if p is not None)
    )
    return layer_norm(
      x,
      scale,
      bias,
      epsilon=self.epsilon,
      saved=self.saved,
      out_dtype=out_dtype,
    )
