"""LayerNorm and GELU that save a quantized copy of their input (COAT).

A transformer keeps, for its backward pass, the input of every non-linear op.
These ops compute exactly what the plain op computes in the forward pass
(fp32 math, output cast to ``out_dtype``), but save ``quantize(x, saved)``
instead of ``x``; the backward pass evaluates the exact derivative at the
dequantized input. With ``saved=None`` they save ``x`` itself and are a
leaner drop-in for autodiff of the plain op (which keeps several
intermediates). COAT saves these inputs as E4M3 in 1 x 16 groups.

LayerNorm over the last axis (mean ``mu``, variance ``var`` by two passes in
fp32, ``r = 1 / sqrt(var + eps)``)::

    xh = (x - mu) r,            y  = xh * gamma + beta
    g  = dy * gamma,            dx = r (g - mean(g) - xh mean(g xh))
    dgamma = sum_rows dy xh,    dbeta = sum_rows dy

The row means run over the whole row (Jetfire's kernel reduced over 128-column
tiles only, which gave 4-28% error in dx).

GELU, exact and tanh-approximate (``c = sqrt(2 / pi)``, ``a = 0.044715``)::

    exact:  gelu(x)  = x Phi(x),         gelu'(x) = Phi(x) + x phi(x)
    tanh:   gelu(x)  = x (1 + t) / 2,    t = tanh(c (x + a x^3))
            gelu'(x) = (1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2

The saved codes and scales are named ``lowprec_act`` / ``lowprec_act_scale``
(``ACTIVATION_RESIDUAL_NAMES``) for remat policies. Cotangents are cast to
their primals' dtypes.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.ad_checkpoint import checkpoint_name

from lowprec_jax.formats._format import QuantFormat
from lowprec_jax.formats._qtensor import QTensor
from lowprec_jax.formats._quantize import quantize
from pallas_kernels.checks import check_float_array, describe

ACTIVATION_RESIDUAL_NAMES = ("lowprec_act", "lowprec_act_scale")
_GELU_A = 0.044715
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _save(x: Array, saved: QuantFormat | None):
  """The residual kept for the backward pass: x, or its quantized copy."""
  if saved is None:
    return checkpoint_name(x, ACTIVATION_RESIDUAL_NAMES[0])
  with jax.named_scope("lowprec_quantize_saved"):
    qt = quantize(x, saved)
  return QTensor(
    checkpoint_name(qt.qvalue, ACTIVATION_RESIDUAL_NAMES[0]),
    checkpoint_name(qt.scale, ACTIVATION_RESIDUAL_NAMES[1]),
    qt.format,
    qt.dtype,
  )


def _restore(residual) -> Array:
  if isinstance(residual, QTensor):
    return residual.dequantize(jnp.float32)
  return residual.astype(jnp.float32)


def _check_saved(saved) -> None:
  if saved is not None and not isinstance(saved, QuantFormat):
    raise ValueError(
      f"saved must be None or a QuantFormat (e.g. Fp8.groups(16)), got "
      f"{saved!r}"
    )


# --------------------------------------------------------------- LayerNorm


def _normalize(x32: Array, epsilon: float):
  mu = jnp.mean(x32, axis=-1, keepdims=True)
  centred = x32 - mu
  var = jnp.mean(centred * centred, axis=-1, keepdims=True)
  r = jax.lax.rsqrt(var + jnp.float32(epsilon))
  return centred * r, r


def _row(p: Array, ndim: int) -> Array:
  """A (d,) parameter as fp32 of rank ``ndim``, to broadcast over rows."""
  return p.astype(jnp.float32).reshape((1,) * (ndim - 1) + p.shape)


def _affine(xh: Array, scale, bias) -> Array:
  if scale is not None:
    xh = xh * _row(scale, xh.ndim)
  if bias is not None:
    xh = xh + _row(bias, xh.ndim)
  return xh


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _layer_norm(x, scale, bias, epsilon, saved, out_dtype):
  xh, _ = _normalize(x.astype(jnp.float32), epsilon)
  return _affine(xh, scale, bias).astype(out_dtype)


def _layer_norm_fwd(x, scale, bias, epsilon, saved, out_dtype):
  y = _layer_norm(x, scale, bias, epsilon, saved, out_dtype)
  return y, (_save(x, saved), scale, bias)


def _layer_norm_bwd(epsilon, saved, out_dtype, res, dy):
  del saved, out_dtype
  x_res, scale, bias = res
  xh, r = _normalize(_restore(x_res), epsilon)
  dy = dy.astype(jnp.float32)
  rows = tuple(range(dy.ndim - 1))
  g = dy if scale is None else dy * _row(scale, dy.ndim)
  mean_g = jnp.mean(g, axis=-1, keepdims=True)
  mean_gx = jnp.mean(g * xh, axis=-1, keepdims=True)
  dx = r * (g - mean_g - xh * mean_gx)
  dscale = None
  if scale is not None:
    dscale = jnp.sum(dy * xh, axis=rows).astype(scale.dtype)
  dbias = None if bias is None else jnp.sum(dy, axis=rows).astype(bias.dtype)
  return dx.astype(x_res.dtype), dscale, dbias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  epsilon: float = 1e-6,
  saved: QuantFormat | None = None,
  out_dtype=None,
) -> Array:
  """LayerNorm over the last axis that saves ``quantize(x, saved)`` for backward.

  Args:
    x: float32, bfloat16 or float16 array ``(..., d)``.
    scale, bias: ``(d,)`` float arrays or None.
    epsilon: added to the variance.
    saved: format of the saved input (e.g. ``Fp8.groups(16, "e4m3",
      scale_storage="bfloat16")``); None saves ``x`` as is.
    out_dtype: result dtype (default: ``x.dtype``).

  Returns:
    ``(x - mean) / sqrt(var + epsilon) * scale + bias`` in ``out_dtype``.

  Example:
    >>> import jax.numpy as jnp
    >>> from lowprec_jax.formats import Fp8
    >>> from lowprec_jax.ops import layer_norm
    >>> x = jnp.arange(32.0).reshape(2, 16)
    >>> y = layer_norm(x, saved=Fp8.groups(16))
    >>> y.shape, float(abs(y.mean()))  < 1e-6
    ((2, 16), True)
  """
  check_float_array("x", x)
  _check_saved(saved)
  d = x.shape[-1] if x.ndim else None
  for name, p in (("scale", scale), ("bias", bias)):
    if p is None:
      continue
    check_float_array(name, p)
    if p.shape != (d,):
      raise ValueError(
        f"{name} has {describe(p)}; expected shape ({d},) for x with "
        f"{describe(x)}"
      )
  out_dtype = np.dtype(x.dtype if out_dtype is None else out_dtype)
  return _layer_norm(x, scale, bias, float(epsilon), saved, out_dtype)


# -------------------------------------------------------------------- GELU


def _gelu_and_slope(x32: Array, approximate: bool) -> tuple[Array, Array]:
  if approximate:
    c, a = jnp.float32(_SQRT_2_OVER_PI), jnp.float32(_GELU_A)
    t = jnp.tanh(c * (x32 + a * x32 * x32 * x32))
    value = 0.5 * x32 * (1 + t)
    slope = 0.5 * (1 + t) + 0.5 * x32 * (1 - t * t) * c * (
      1 + 3 * a * x32 * x32
    )
    return value, slope
  cdf = 0.5 * (1 + jax.lax.erf(x32 * jnp.float32(1 / math.sqrt(2.0))))
  pdf = jnp.exp(-0.5 * x32 * x32) * jnp.float32(1 / math.sqrt(2 * math.pi))
  return x32 * cdf, cdf + x32 * pdf


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gelu(x, approximate, saved):
  del saved
  return _gelu_and_slope(x.astype(jnp.float32), approximate)[0].astype(x.dtype)


def _gelu_fwd(x, approximate, saved):
  return _gelu(x, approximate, saved), _save(x, saved)


def _gelu_bwd(approximate, saved, x_res, dy):
  del saved
  slope = _gelu_and_slope(_restore(x_res), approximate)[1]
  return ((dy.astype(jnp.float32) * slope).astype(x_res.dtype),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def gelu(
  x: Array, *, approximate: bool = True, saved: QuantFormat | None = None
) -> Array:
  """GELU (``jax.nn.gelu``) that saves ``quantize(x, saved)`` for backward.

  Args:
    x: float32, bfloat16 or float16 array.
    approximate: the tanh approximation (``jax.nn.gelu``'s default) or the
      exact erf form.
    saved: format of the saved input; None saves ``x`` as is.

  Returns:
    ``gelu(x)`` computed in fp32, in ``x.dtype``.
  """
  check_float_array("x", x)
  _check_saved(saved)
  return _gelu(x, bool(approximate), saved)
