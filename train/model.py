"""A small GPT in NNX: pre-LayerNorm blocks, bf16 attention, GELU MLP.

The residual stream, attention and every activation are in the compute dtype
(bf16 by default); parameters are fp32. Linears see tokens flattened to 2-D,
``(B*T, d)``: the math is the same, and XLA:CPU runs the bf16 weight gradient
~7x faster than with two contracting dims. LayerNorm and GELU are
:class:`lowprec_jax.nn.LayerNorm` and :func:`lowprec_jax.ops.gelu`, which
save only their input for the backward pass, and attention keeps only
FlashAttention's residuals (``train/attention.py``), so saved-activation
measurements reflect a lean bf16 model rather than autodiff's extra copies.

Every Linear is a plain ``nnx.Linear``; a recipe is applied afterwards by
:func:`quantize_gpt`: :func:`lowprec_jax.nn.quantize_model` rewrites the four
matmuls of each block (``attn/qkv``, ``attn/proj``, ``mlp/fc``, ``mlp/proj``),
and ``coat_fp8`` also makes the block's LayerNorms and GELU save their inputs
in FP8 (E4M3, 1 x 16 groups). Embeddings, attention itself, the final
LayerNorm and the LM head stay in high precision, as in Jetfire and COAT.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lowprec_jax.formats import QuantFormat
from lowprec_jax.nn import LayerNorm, QuantRule, quantize_model
from lowprec_jax.ops import (
  COAT_SAVED_ACTIVATIONS,
  DotQuantConfig,
  gelu,
  get_recipe,
)
from train.attention import causal_attention

BLOCK_LINEARS = r"blocks/\d+/(attn/(qkv|proj)|mlp/(fc|proj))"
ARCHS = ("gpt", "llama")
# Recipes whose norms and activations save a quantized input (the rest: none).
SAVED_ACTIVATIONS: dict[str, QuantFormat] = {"coat_fp8": COAT_SAVED_ACTIVATIONS}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Model shape; ``dtype`` is the compute dtype (parameters stay fp32)."""

  vocab_size: int = 256
  seq_len: int = 128
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  mlp_ratio: int = 4
  dtype: str = "bfloat16"
  arch: str = "gpt"  # or "llama" (train/llama.py)
  n_kv_heads: int | None = None  # llama: key/value heads (None: n_heads)

  def __post_init__(self):
    if self.arch not in ARCHS:
      raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
    if self.d_model % self.n_heads:
      raise ValueError(
        f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
      )
    if self.n_kv_heads is not None:
      if self.arch != "llama":
        raise ValueError(
          f"n_kv_heads={self.n_kv_heads}: grouped-query attention needs "
          "arch='llama'"
        )
      if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
        raise ValueError(
          f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}"
        )
    if self.arch == "llama" and (self.d_model // self.n_heads) % 2:
      raise ValueError(
        f"head dimension {self.d_model // self.n_heads} must be even for "
        "rotary embeddings (arch='llama')"
      )

  @property
  def kv_heads(self) -> int:
    return self.n_heads if self.n_kv_heads is None else self.n_kv_heads


def _linear(cfg: GPTConfig, d_in: int, d_out: int, rngs, *, residual=False):
  """A bias-free Linear with GPT-2's init: N(0, 0.02), scaled by
  1/sqrt(2 n_layers) for the projections that write into the residual."""
  std = 0.02 / (2 * cfg.n_layers) ** 0.5 if residual else 0.02
  return nnx.Linear(
    d_in,
    d_out,
    use_bias=False,
    dtype=jnp.dtype(cfg.dtype),
    kernel_init=nnx.initializers.normal(std),
    rngs=rngs,
  )


class Attention(nnx.Module):
  def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
    d = cfg.d_model
    self.n_heads = cfg.n_heads
    self.qkv = _linear(cfg, d, 3 * d, rngs)
    self.proj = _linear(cfg, d, d, rngs, residual=True)

  def __call__(self, x):
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x.reshape(b * t, d)), 3, axis=-1)
    shape = (b, t, self.n_heads, d // self.n_heads)
    q, k, v = (a.reshape(shape) for a in (q, k, v))
    y = causal_attention(q, k, v)
    return self.proj(y.reshape(b * t, d)).reshape(b, t, d)


class MLP(nnx.Module):
  def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
    d, h = cfg.d_model, cfg.d_model * cfg.mlp_ratio
    self.fc = _linear(cfg, d, h, rngs)
    self.proj = _linear(cfg, h, d, rngs, residual=True)
    self.saved: QuantFormat | None = None  # format of GELU's saved input

  def __call__(self, x):
    b, t, d = x.shape
    y = self.proj(gelu(self.fc(x.reshape(b * t, d)), saved=self.saved))
    return y.reshape(b, t, d)


class Block(nnx.Module):
  def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.ln1 = LayerNorm(cfg.d_model, dtype=dtype, rngs=rngs)
    self.attn = Attention(cfg, rngs)
    self.ln2 = LayerNorm(cfg.d_model, dtype=dtype, rngs=rngs)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x):
    x = x + self.attn(self.ln1(x))
    return x + self.mlp(self.ln2(x))


class GPT(nnx.Module):
  """Decoder-only LM: tokens (B, T) int32 -> logits (B, T, vocab) fp32."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    self.cfg = cfg
    self.wte = nnx.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=jnp.dtype(cfg.dtype),
      embedding_init=init,
      rngs=rngs,
    )
    self.wpe = nnx.Param(init(rngs.params(), (cfg.seq_len, cfg.d_model)))
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.ln_f = LayerNorm(cfg.d_model, dtype=jnp.dtype(cfg.dtype), rngs=rngs)
    self.lm_head = _linear(cfg, cfg.d_model, cfg.vocab_size, rngs)

  def __call__(self, tokens):
    t = tokens.shape[1]
    if t > self.cfg.seq_len:
      raise ValueError(
        f"tokens has shape {tokens.shape}; sequence length {t} exceeds "
        f"seq_len={self.cfg.seq_len}"
      )
    x = self.wte(tokens) + self.wpe[None, :t].astype(self.wte.dtype)
    for block in self.blocks:
      x = block(x)
    b, d = x.shape[0], x.shape[-1]
    logits = self.lm_head(self.ln_f(x).reshape(b * t, d))
    return logits.reshape(b, t, -1).astype(jnp.float32)


def make_model(cfg: GPTConfig, *, rngs: nnx.Rngs) -> nnx.Module:
  """The model of ``cfg.arch``: :class:`GPT` or :class:`train.llama.Llama`."""
  if cfg.arch == "llama":
    from train.llama import Llama  # llama builds on this module

    return Llama(cfg, rngs=rngs)
  return GPT(cfg, rngs=rngs)


def quantize_gpt(
  model: nnx.Module,
  recipe: DotQuantConfig | str,
  *,
  rngs: nnx.Rngs,
  implementation: str | None = None,
) -> nnx.Module:
  """Applies ``recipe`` to every block Linear of a GPT or a Llama (no-op for
  ``bf16``), and for recipes in ``SAVED_ACTIVATIONS`` to the GPT blocks'
  LayerNorms and GELU (a Llama's RMSNorm, SiLU and multiply have no such
  saving version yet: those recipes raise)."""
  config = get_recipe(recipe)
  saved = SAVED_ACTIVATIONS.get(config.name)
  if saved is not None and model.cfg.arch != "gpt":
    raise ValueError(
      f"recipe {config.name!r} also saves norm and activation inputs in "
      f"{saved.name}; for arch {model.cfg.arch!r} (RMSNorm, SiLU, the SwiGLU "
      "multiply) those ops are not implemented yet: use arch 'gpt' or a "
      "GEMM-only recipe"
    )
  if config.quantized:
    rule = QuantRule(
      path=BLOCK_LINEARS, config=config, implementation=implementation
    )
    quantize_model(model, [rule, QuantRule(path=".*", config=None)], rngs=rngs)
  if saved is None:
    return model
  for block in model.blocks:
    block.ln1.saved = block.ln2.saved = block.mlp.saved = saved
  return model


def loss_fn(model: GPT, batch: jax.Array) -> jax.Array:
  """Mean next-byte cross-entropy (nats) of a (B, T + 1) token batch."""
  logits = model(batch[:, :-1])
  targets = batch[:, 1:]
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
