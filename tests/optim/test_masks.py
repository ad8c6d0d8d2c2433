"""Which leaves keep fp32 states: default and custom masks, by global shape."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lowprec_jax.optim import (
  QuantizedMoment,
  adamw_8bit,
  default_quantize_mask,
  explain_quantize_mask,
  quantize_mask,
)
from train.model import GPT, GPTConfig

PARAMS = {
  "wte": {"embedding": jnp.zeros((1000, 128))},
  "wpe": jnp.zeros((128, 128)),
  "blocks": {
    0: {
      "attn": {"qkv": {"kernel": jnp.zeros((128, 384))}},
      "ln1": {"scale": jnp.zeros((128,)), "bias": jnp.zeros((128,))},
    }
  },
  "small": jnp.zeros((32, 32)),  # 1024 < 4096 elements
  "lm_head": {"kernel": jnp.zeros((128, 1000))},
  "big": {"kernel": jnp.zeros((128, 1024))},
}
QUANTIZED = {"blocks/0/attn/qkv/kernel", "big/kernel"}


def _paths(tree):
  leaves = jax.tree_util.tree_leaves_with_path(
    tree, is_leaf=lambda x: isinstance(x, QuantizedMoment)
  )
  return {
    jax.tree_util.keystr(k, simple=True, separator="/"): v for k, v in leaves
  }


def test_default_mask_keeps_embeddings_head_norms_biases_small_in_fp32():
  flags = _paths(default_quantize_mask(PARAMS))
  assert {k for k, v in flags.items() if v} == QUANTIZED


def test_default_mask_on_the_training_gpt():
  model = GPT(GPTConfig(n_layers=1), rngs=nnx.Rngs(0))
  flags = _paths(default_quantize_mask(nnx.state(model, nnx.Param)))
  quantized = {k.removesuffix("/value") for k, v in flags.items() if v}
  assert quantized == {
    "blocks/0/attn/qkv/kernel",
    "blocks/0/attn/proj/kernel",
    "blocks/0/mlp/fc/kernel",
    "blocks/0/mlp/proj/kernel",
  }


def test_mask_uses_the_global_shape_of_a_sharded_parameter():
  """(16, 512) = 8192 elements split over 2 devices: 4096 per shard. With
  min_size 8192 the global shape qualifies; a per-shard view would not."""
  mesh = Mesh(np.array(jax.devices()[:2]), ("x",))
  w = jax.device_put(jnp.zeros((16, 512)), NamedSharding(mesh, P("x")))
  mask = quantize_mask(min_size=8192)
  assert jax.jit(mask)({"w": w})["w"]
  assert not mask({"w": jnp.zeros((8, 512))})["w"]


def test_custom_masks_tree_and_callable():
  everything = quantize_mask(min_size=0, exclude=None)(PARAMS)
  flags = _paths(everything)
  assert {k for k, v in flags.items() if not v} == {
    "blocks/0/ln1/scale",
    "blocks/0/ln1/bias",
  }
  only_head = jax.tree.map(lambda _: False, PARAMS)
  only_head["lm_head"]["kernel"] = True  # overrides the default exclusion
  for mask in (only_head, lambda params: only_head):
    state = adamw_8bit(1e-3, quantize_mask=mask).init(PARAMS)
    quantized = jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, QuantizedMoment)
    )
    shapes = [m.shape for m in quantized if isinstance(m, QuantizedMoment)]
    assert shapes == [(128, 1000)] * 2


def test_fp32_leaves_get_optax_adam_states():
  """Masked-out leaves hold optax.scale_by_adam's own states (float32 mu
  and nu) in the one state, beside the quantized leaves."""
  state = adamw_8bit(1e-3).init(PARAMS)
  mu = _paths(optax.tree.get(state, "mu"))
  assert mu["wte/embedding"].dtype == jnp.float32
  assert mu["blocks/0/ln1/bias"].shape == (128,)
  assert isinstance(mu["big/kernel"], QuantizedMoment)


def test_default_mask_keeps_every_kind_of_output_head_in_fp32():
  """Heads named as foreign models name them (Linen lm1b's
  ``decoder/logitdense``, a ``head`` scope, ``output_proj``) keep fp32
  states; the GPT's attention and MLP projections ("proj") do not."""
  kernel = jnp.zeros((128, 1000))
  params = {
    "decoder": {"logitdense": {"kernel": kernel}},
    "head": {"kernel": kernel},
    "output_proj": {"kernel": kernel},
    "to_logits": {"kernel": kernel},
    "blocks": {"attn": {"proj": {"kernel": kernel}}},
    "multi_head": {"kernel": kernel},  # a word containing "head" is not one
  }
  flags = _paths(default_quantize_mask(params))
  assert {k for k, v in flags.items() if v} == {
    "blocks/attn/proj/kernel",
    "multi_head/kernel",
  }


def test_explain_quantize_mask_gives_every_leaf_and_the_reason():
  table = explain_quantize_mask(PARAMS).splitlines()
  assert table[0].split() == ["path", "shape", "moments"]
  rows = {line.split()[0]: line for line in table[1:]}
  assert set(rows) == set(_paths(PARAMS))
  assert rows["wte/embedding"].endswith("fp32 (path matches 'wte')")
  assert rows["small"].endswith("fp32 (1024 elements < min_size 4096)")
  assert rows["blocks/0/ln1/bias"].endswith("fp32 (ndim 1 < 2)")
  assert rows["big/kernel"].endswith("quantized")
  # A tree of bools (or any callable) is shown as the optimizer applies it.
  tree = jax.tree.map(lambda p: p.ndim == 1, PARAMS)
  rows = explain_quantize_mask(PARAMS, tree).splitlines()[1:]
  assert sum(r.endswith("quantized") for r in rows) == 2  # the two ln1 vectors
  assert sum(r.endswith("fp32 (mask is False)") for r in rows) == 6
  with pytest.raises(ValueError, match="1 decisions for 8 leaves"):
    explain_quantize_mask(PARAMS, {"wpe": True})
