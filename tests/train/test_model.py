"""The small GPT and how recipes are applied to it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lowprec_jax.nn import quantized_layers
from lowprec_jax.ops import COAT_SAVED_ACTIVATIONS
from train.model import GPT, GPTConfig, loss_fn, quantize_gpt

TINY = GPTConfig(seq_len=16, d_model=32, n_layers=2, n_heads=2)


def test_forward_shape_and_initial_loss_is_uniform():
  model = GPT(TINY, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 17)))
  assert model(tokens[:, :-1]).shape == (3, 16, 256)
  assert float(loss_fn(model, tokens)) == pytest.approx(np.log(256), abs=0.1)


def test_recipe_quantizes_the_four_block_linears_only():
  model = quantize_gpt(
    GPT(TINY, rngs=nnx.Rngs(0)), "jetfire_int8", rngs=nnx.Rngs(1)
  )
  layers = quantized_layers(model)
  assert layers.pop("lm_head") == "none"
  assert len(layers) == 8 and set(layers.values()) == {"jetfire_int8"}
  assert {p.split("/", 2)[2] for p in layers} == {
    "attn/qkv",
    "attn/proj",
    "mlp/fc",
    "mlp/proj",
  }
  plain = quantize_gpt(GPT(TINY, rngs=nnx.Rngs(0)), "bf16", rngs=nnx.Rngs(1))
  assert set(quantized_layers(plain).values()) == {"none"}


def test_coat_fp8_saves_block_norm_and_gelu_inputs_in_fp8():
  model = quantize_gpt(
    GPT(TINY, rngs=nnx.Rngs(0)), "coat_fp8", rngs=nnx.Rngs(1)
  )
  assert set(quantized_layers(model).values()) == {"none", "coat_fp8"}
  for block in model.blocks:
    assert block.ln1.saved == block.ln2.saved == COAT_SAVED_ACTIVATIONS
    assert block.mlp.saved == COAT_SAVED_ACTIVATIONS
  assert model.ln_f.saved is None  # the head's norm stays high precision
  other = quantize_gpt(
    GPT(TINY, rngs=nnx.Rngs(0)), "fp8_current", rngs=nnx.Rngs(1)
  )
  assert all(b.mlp.saved is None for b in other.blocks)


def test_residual_stream_and_activations_are_bf16():
  model = GPT(TINY, rngs=nnx.Rngs(0))
  tokens = jnp.zeros((1, 16), jnp.int32)
  x = model.wte(tokens) + model.wpe[None, :16].astype(jnp.bfloat16)
  assert model.blocks[0](x).dtype == jnp.bfloat16


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="divisible by n_heads"):
    GPTConfig(d_model=30, n_heads=4)
  model = GPT(TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="exceeds seq_len=16"):
    model(jnp.zeros((1, 17), jnp.int32))


def test_gradients_reach_every_parameter():
  model = quantize_gpt(
    GPT(TINY, rngs=nnx.Rngs(0)), "fp8_current", rngs=nnx.Rngs(1)
  )
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 17)))
  grads = nnx.jit(nnx.grad(loss_fn))(model, tokens)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.abs(g).max()) > 0, path
