"""The LLaMA-style model: RoPE, grouped-query attention, SwiGLU, recipes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lowprec_jax.nn import quantized_layers
from train.cli import configs, parser
from train.llama import Llama, rope, swiglu_hidden
from train.loop import TrainConfig, read_metrics, run
from train.model import GPTConfig, loss_fn, make_model, quantize_gpt

# 4 query heads sharing 2 key/value heads (grouped-query attention).
TINY = GPTConfig(
  seq_len=16, d_model=32, n_layers=2, n_heads=4, arch="llama", n_kv_heads=2
)


def _tokens(seed, shape=(2, 17)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape))


def test_forward_shape_and_initial_loss_is_uniform():
  model = make_model(TINY, rngs=nnx.Rngs(0))
  assert isinstance(model, Llama)
  tokens = _tokens(0, (3, 17))
  assert model(tokens[:, :-1]).shape == (3, 16, 256)
  assert float(loss_fn(model, tokens)) == pytest.approx(np.log(256), abs=0.1)
  assert swiglu_hidden(32) == 128
  assert swiglu_hidden(4096) == 11008  # LLaMA-7B's


def test_rope_scores_depend_only_on_relative_position():
  """<rope(q, i), rope(k, j)> is the same for (i, j) and (i + s, j + s);
  position 0 is the identity; norms are kept (a rotation)."""
  gen = np.random.default_rng(0)
  q, k = (
    jnp.asarray(gen.standard_normal((1, 1, 1, 8)), jnp.float32) for _ in "qk"
  )

  def score(i, j):
    rq = rope(q, jnp.array([i]))
    rk = rope(k, jnp.array([j]))
    return float(jnp.sum(rq * rk))

  for i, j, shift in [(3, 1, 5), (0, 7, 2), (9, 9, 4)]:
    assert score(i, j) == pytest.approx(score(i + shift, j + shift), rel=1e-5)
  np.testing.assert_array_equal(rope(q, jnp.array([0])), q)
  rotated = rope(q, jnp.array([5]))
  assert float(jnp.linalg.norm(rotated)) == pytest.approx(
    float(jnp.linalg.norm(q)), rel=1e-6
  )


def test_grouped_query_attention_matches_jax_dot_product_attention():
  """The block's attention equals jax.nn.dot_product_attention with 2
  key/value heads for 4 query heads (query head h reads kv head h // 2),
  from the same projections and rotations."""
  cfg = GPTConfig(**{**TINY.__dict__, "dtype": "float32"})
  attn = make_model(cfg, rngs=nnx.Rngs(0)).blocks[0].attn
  x = jnp.asarray(
    np.random.default_rng(1).standard_normal((2, 16, 32)), jnp.float32
  )
  y = attn.qkv(x.reshape(32, 32))
  q, k, v = y[:, :32], y[:, 32:48], y[:, 48:]
  q = rope(q.reshape(2, 16, 4, 8), jnp.arange(16))
  k = rope(k.reshape(2, 16, 2, 8), jnp.arange(16))
  o = jax.nn.dot_product_attention(q, k, v.reshape(2, 16, 2, 8), is_causal=True)
  want = attn.proj(o.reshape(32, 32)).reshape(2, 16, 32)
  np.testing.assert_allclose(attn(x), want, rtol=2e-5, atol=2e-6)


def test_recipe_quantizes_the_four_block_linears_and_gradients_reach_all():
  model = quantize_gpt(
    make_model(TINY, rngs=nnx.Rngs(0)), "fp8_current", rngs=nnx.Rngs(1)
  )
  layers = quantized_layers(model)
  assert layers.pop("lm_head") == "none"
  assert len(layers) == 8 and set(layers.values()) == {"fp8_current"}
  grads = nnx.jit(nnx.grad(loss_fn))(model, _tokens(2))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.abs(g).max()) > 0, path


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="arch must be one of"):
    GPTConfig(arch="t5")
  with pytest.raises(ValueError, match="grouped-query attention needs"):
    GPTConfig(n_kv_heads=2)
  with pytest.raises(ValueError, match="must divide n_heads=4"):
    GPTConfig(arch="llama", n_heads=4, n_kv_heads=3)
  with pytest.raises(ValueError, match="must be even for rotary"):
    GPTConfig(arch="llama", d_model=12, n_heads=4)
  with pytest.raises(ValueError, match="not implemented for arch 'llama'"):
    TrainConfig(recipe="coat_fp8", model=TINY)
  with pytest.raises(ValueError, match="those ops are not implemented yet"):
    quantize_gpt(
      make_model(TINY, rngs=nnx.Rngs(0)), "coat_fp8", rngs=nnx.Rngs(1)
    )


def test_cli_builds_a_llama_config():
  args = parser().parse_args(
    ["--recipe", "bf16,jetfire_int8", "--arch", "llama", "--kv-heads", "1"]
  )
  for cfg in configs(args):
    assert cfg.model.arch == "llama" and cfg.model.kv_heads == 1


@pytest.mark.standard_promotion
def test_llama_trains_with_a_quantized_recipe(tmp_path):
  cfg = TrainConfig(
    recipe="jetfire_int8", model=GPTConfig(**{**TINY.__dict__, "n_layers": 1}),
    steps=8, batch_size=4, lr=1e-2, warmup=2, eval_every=8, eval_batches=1,
    ckpt_every=8,
  )  # fmt: skip
  summary = run(cfg, tmp_path, provenance={}, progress=False)
  losses = [r["loss"] for r in read_metrics(tmp_path)]
  assert len(losses) == 8 and all(np.isfinite(losses))
  assert losses[-1] < losses[0]
  assert summary["gemms"]["quantized"] == 12  # 4 linears x 3 GEMMs
