"""Causal multi-head attention that keeps only FlashAttention's residuals.

Autodiff of ``softmax(q k^T) v`` keeps the (B, H, T, T) probabilities (and on
XLA:CPU several more such arrays) for the backward pass. FlashAttention keeps
only q, k, v and the per-row log-sum-exp, and recomputes the probabilities.
This op does the same in plain jnp, so that saved-activation measurements of
the GPT reflect what a GPU run with flash attention keeps, for every recipe.
Attention itself is not quantized (COAT and Jetfire keep it in 16 bits).

With ``s = scale * q k^T`` (causally masked), ``lse = logsumexp_k s`` and
``p = exp(s - lse)``::

    o  = p v
    dv = p^T do,   dp = do v^T,   dsum = rowsum(p * dp)   (= rowsum(do * o))
    ds = p * (dp - dsum),   dq = scale * ds k,   dk = scale * ds^T q

``dsum`` is computed from ``p`` and ``dp`` rather than from ``o``, so the
output itself need not be saved (the next Linear saves its own copy of it).
Scores, probabilities and accumulations are fp32.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import Array


def _scores(q: Array, k: Array) -> Array:
  """Masked, scaled fp32 scores (B, H, Tq, Tk) for (B, T, H, D) inputs."""
  scale = jnp.float32(1.0 / math.sqrt(q.shape[-1]))
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  t = q.shape[1]
  causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
  return jnp.where(causal[None, None], s * scale, -jnp.inf)


def _probabilities(s: Array, lse: Array) -> Array:
  return jnp.exp(s - lse[..., None])


@jax.custom_vjp
def causal_attention(q: Array, k: Array, v: Array) -> Array:
  """``softmax(q k^T / sqrt(D), causal) v`` for (B, T, H, D) q, k, v."""
  s = _scores(q, k)
  lse = jax.nn.logsumexp(s, axis=-1)
  return _output(_probabilities(s, lse), v)


def _output(p: Array, v: Array) -> Array:
  o = jnp.einsum("bhqk,bkhd->bqhd", p, v, preferred_element_type=jnp.float32)
  return o.astype(v.dtype)


def _forward(q, k, v):
  s = _scores(q, k)
  lse = jax.nn.logsumexp(s, axis=-1)
  return _output(_probabilities(s, lse), v), (q, k, v, lse)


def _backward(res, do):
  q, k, v, lse = res
  scale = jnp.float32(1.0 / math.sqrt(q.shape[-1]))
  p = _probabilities(_scores(q, k), lse)
  f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
  do = do.astype(jnp.float32)
  dv = f32("bhqk,bqhd->bkhd", p, do)
  dp = f32("bqhd,bkhd->bhqk", do, v.astype(jnp.float32))
  ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True)) * scale
  dq = f32("bhqk,bkhd->bqhd", ds, k.astype(jnp.float32))
  dk = f32("bhqk,bqhd->bkhd", ds, q.astype(jnp.float32))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


causal_attention.defvjp(_forward, _backward)
