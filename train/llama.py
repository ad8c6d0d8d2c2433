"""A LLaMA-style model in NNX: RMSNorm, SwiGLU, rotary positions, GQA.

The same conventions as the GPT (:mod:`train.model`): fp32 parameters, the
compute dtype for activations, Linears on flattened ``(B*T, d)`` tokens, and
the same Linear names, so a recipe reaches the same four matmuls per block
(``attn/qkv``, ``attn/proj``, ``mlp/fc``, ``mlp/proj``)::

    x = x + proj(attention(rope(q), rope(k), v))      q, k, v = qkv(rms1(x))
    x = x + proj(silu(gate) * up)                     gate, up = fc(rms2(x))

``qkv`` produces ``n_heads`` query heads and ``n_kv_heads`` key and value
heads (grouped-query attention: each key/value head serves ``n_heads /
n_kv_heads`` query heads); the SwiGLU hidden size is ``8 d / 3`` rounded up
to a multiple of 128 (:func:`swiglu_hidden`). There is no position
embedding: RoPE rotates each (i, i + D/2) pair of a query or key at position
``p`` by ``p * 10000^(-2i/D)``, so scores depend only on relative position.
Attention is :func:`train.attention.causal_attention` on the key and value
heads repeated to ``n_heads``.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from train.attention import causal_attention
from train.model import Block, GPTConfig, _linear

ROPE_BASE = 10000.0


def swiglu_hidden(d_model: int) -> int:
  """LLaMA's ``8 d / 3`` (the parameter count of a 4d GELU MLP), rounded up
  to a multiple of 128 (the largest block any recipe tiles K with)."""
  return math.ceil(8 * d_model / 3 / 128) * 128


def rope(x: Array, positions: Array) -> Array:
  """Rotary embedding of ``x`` (B, T, H, D) at ``positions`` (T,), in fp32,
  returned in ``x.dtype``: pairs ``(x_i, x_{i+D/2})`` rotated by angle
  ``p * ROPE_BASE^(-2i/D)``."""
  half = x.shape[-1] // 2
  freqs = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]
  cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
  a, b = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
  return out.astype(x.dtype)


class LlamaAttention(nnx.Module):
  def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
    d = cfg.d_model
    self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.kv_heads
    self.head_dim = d // cfg.n_heads
    self.qkv = _linear(cfg, d, d + 2 * self.n_kv_heads * self.head_dim, rngs)
    self.proj = _linear(cfg, d, d, rngs, residual=True)

  def __call__(self, x):
    b, t, d = x.shape
    kv = self.n_kv_heads * self.head_dim
    q, k, v = jnp.split(self.qkv(x.reshape(b * t, d)), [d, d + kv], axis=-1)
    q = q.reshape(b, t, self.n_heads, self.head_dim)
    k, v = (a.reshape(b, t, self.n_kv_heads, self.head_dim) for a in (k, v))
    positions = jnp.arange(t)
    q, k = rope(q, positions), rope(k, positions)
    group = self.n_heads // self.n_kv_heads
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    y = causal_attention(q, k, v)
    return self.proj(y.reshape(b * t, d)).reshape(b, t, d)


class SwiGLU(nnx.Module):
  def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
    d, h = cfg.d_model, swiglu_hidden(cfg.d_model)
    self.fc = _linear(cfg, d, 2 * h, rngs)  # gate and up, side by side
    self.proj = _linear(cfg, h, d, rngs, residual=True)

  def __call__(self, x):
    b, t, d = x.shape
    gate, up = jnp.split(self.fc(x.reshape(b * t, d)), 2, axis=-1)
    return self.proj(jax.nn.silu(gate) * up).reshape(b, t, d)


class RMSNorm(nnx.Module):
  """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis, statistics in
  fp32, output in the compute dtype (explicit casts: the tests run with
  strict dtype promotion, which ``nnx.RMSNorm`` does not support)."""

  def __init__(self, dim: int, dtype, eps: float = 1e-6):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.dtype, self.eps = jnp.dtype(dtype), eps

  def __call__(self, x):
    x = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].reshape((1,) * (x.ndim - 1) + (-1,))
    return (x * inv * scale).astype(self.dtype)


def _rms_norm(cfg: GPTConfig, rngs: nnx.Rngs) -> RMSNorm:
  del rngs  # no random initialisation
  return RMSNorm(cfg.d_model, cfg.dtype)


class LlamaBlock(Block):
  """The GPT's pre-norm residual block with LLaMA's norm, attention, MLP."""

  def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):  # replaces, not extends
    self.ln1 = _rms_norm(cfg, rngs)
    self.attn = LlamaAttention(cfg, rngs)
    self.ln2 = _rms_norm(cfg, rngs)
    self.mlp = SwiGLU(cfg, rngs)


class Llama(nnx.Module):
  """Decoder-only LM: tokens (B, T) int32 -> logits (B, T, vocab) fp32."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.wte = nnx.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=jnp.dtype(cfg.dtype),
      embedding_init=nnx.initializers.normal(0.02),
      rngs=rngs,
    )
    self.blocks = nnx.List([LlamaBlock(cfg, rngs) for _ in range(cfg.n_layers)])
    self.ln_f = _rms_norm(cfg, rngs)
    self.lm_head = _linear(cfg, cfg.d_model, cfg.vocab_size, rngs)

  def __call__(self, tokens):
    b, t = tokens.shape
    if t > self.cfg.seq_len:
      raise ValueError(
        f"tokens has shape {tokens.shape}; sequence length {t} exceeds "
        f"seq_len={self.cfg.seq_len}"
      )
    x = self.wte(tokens)
    for block in self.blocks:
      x = block(x)
    logits = self.lm_head(self.ln_f(x).reshape(b * t, -1))
    return logits.reshape(b, t, -1).astype(jnp.float32)
