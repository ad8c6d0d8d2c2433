"""int4_dot_general: the forward and backward against plain-jnp references,
its census, its jaxpr, its state in QuantDotGeneral, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lowprec_jax.formats import Int4, fake_quantize, quantize
from lowprec_jax.formats._hadamard import choose_hadamard_block
from lowprec_jax.formats._lsq import (
  lsq_derivatives,
  lsq_fake_quantize,
  lsq_initial_step,
  lsq_quantize,
)
from lowprec_jax.nn import QuantDotGeneral, QuantRule, quantize_model
from lowprec_jax.ops import (
  Int4Config,
  census,
  get_recipe,
  int4_dot_general,
  int4_hq,
  int4_hq_b32,
  quantized_dot_general,
)
from lowprec_jax.ops._int4_dot import (
  _SALT_SPLIT,
  _uniforms,
  canonical_operands,
  choose_block,
  initial_steps,
)
from pallas_kernels.bit_split import bit_split, combined_codes
from pallas_kernels.checks import as_seed
from pallas_kernels.hadamard import block_hadamard
from tests.helpers import all_dots, normal, raises, rel_err

DIMS = (((1,), (0,)), ((), ()))  # x (M, K) . w (K, N): a Linear
X = normal((64, 128), seed=1).at[:, 5].mul(20.0)  # one outlier channel
W = normal((128, 48), seed=2) * 0.1
COT = normal((64, 48), seed=3)


def _run(cfg, block_index, steps, seed=7):
  return int4_dot_general(
    X, W, DIMS, config=cfg, block_index=block_index, steps=steps, seed=seed
  )


def _state(cfg):
  x3, w3 = canonical_operands(X, W, DIMS)
  index = choose_block(x3, w3, cfg)
  return index, initial_steps(x3, w3, index, (1, 2, 4, 8, 16, 32, 64, 128))


def test_block_search_quantizes_as_the_forward_does():
  x3, w3 = canonical_operands(X, W, DIMS)
  for cfg, quantizer in (
    (int4_hq_b32(), lambda v: fake_quantize(v, Int4.blocks(32))),
    (int4_hq(), lambda v: lsq_fake_quantize(v, lsq_initial_step(v))),
  ):
    want, _, _ = choose_hadamard_block(x3, w3, quantizer=quantizer)
    assert int(choose_block(x3, w3, cfg)) == int(want)


def test_forward_is_the_int8_gemm_of_the_rotated_codes():
  cfg = int4_hq_b32()
  index, _ = _state(cfg)
  block = 2 ** int(index)
  got = jax.jit(lambda: _run(cfg, index, None))()
  # Reference: rotate, quantize as 32x32 INT4 blocks, multiply in f64.
  xq = quantize(block_hadamard(X, block), Int4.blocks(32)).dequantize()
  wq = quantize(block_hadamard(W.T, block), Int4.blocks(32)).dequantize()
  want = np.asarray(xq, np.float64) @ np.asarray(wq, np.float64).T
  # Exact int32 partial sums, f32 rescale and accumulation of K/32 = 4 terms.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  assert rel_err(got, X @ W) < 0.2


def test_lsq_forward_uses_the_given_steps():
  cfg = int4_hq()
  index, steps = _state(cfg)
  block = 2 ** int(index)
  got = _run(cfg, index, steps)
  qx, _ = lsq_quantize(block_hadamard(X, block), steps[0])
  qw, _ = lsq_quantize(block_hadamard(W.T, block), steps[1])
  want = (qx.astype(jnp.float32) @ qw.astype(jnp.float32).T) * (
    steps[0] * steps[1]
  )
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_all_rows_backward_by_hand():
  # sampling="all": dx = (c Q(wH) / sigma) H, dw = (c^T Q(xH) / sigma) H.
  cfg = int4_hq_b32()
  index, _ = _state(cfg)
  block = 2 ** int(index)
  seed = 11

  def f(x, w):
    return jnp.sum(
      int4_dot_general(x, w, DIMS, config=cfg, block_index=index, seed=seed)
      * COT
    )

  dx, dw = jax.jit(jax.grad(f, argnums=(0, 1)))(X, W)
  u = _uniforms(as_seed(seed), _SALT_SPLIT, (1, 64, 48))[0]
  hi, lo, sigma = bit_split(COT, u, "full")
  c = np.asarray(combined_codes(hi, lo), np.float64) / float(sigma)
  xq = quantize(block_hadamard(X, block), Int4.blocks(32)).dequantize()
  wq = quantize(block_hadamard(W.T, block), Int4.blocks(32)).dequantize()
  want_dx = block_hadamard(
    jnp.asarray(c @ np.asarray(wq, np.float64), jnp.float32), block
  )
  want_dw = block_hadamard(
    jnp.asarray(c.T @ np.asarray(xq, np.float64), jnp.float32), block
  )
  np.testing.assert_allclose(dx, want_dx, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(dw, want_dw.T, rtol=2e-5, atol=1e-4)


def test_lsq_step_gradients_by_hand():
  cfg = Int4Config(name="t", sampling="all", split="full")
  index, steps = _state(cfg)
  block = 2 ** int(index)

  def f(s):
    return jnp.sum(
      int4_dot_general(
        X, W, DIMS, config=cfg, block_index=index, steps=s, seed=3
      )
      * COT
    )

  got = jax.grad(f)(steps)
  u = _uniforms(as_seed(3), _SALT_SPLIT, (1, 64, 48))[0]
  hi, lo, sigma = bit_split(COT, u, "full")
  c = combined_codes(hi, lo).astype(jnp.float32) / sigma
  qx, dqx = lsq_quantize(block_hadamard(X, block), steps[0])
  qw, dqw = lsq_quantize(block_hadamard(W.T, block), steps[1])
  dv_x = c @ (qw.astype(jnp.float32) * steps[1])
  dv_w = c.T @ (qx.astype(jnp.float32) * steps[0])
  want = []
  for dv, q, d in ((dv_x, qx, dqx), (dv_w, qw, dqw)):
    _, ds = lsq_derivatives(q, d)
    want.append(jnp.sum(dv * ds) / np.sqrt(dv.size * 7))
  np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("recipe", ["int4_hq", "int4_hq_b32"])
def test_gradients_approximate_the_exact_ones(recipe):
  cfg = get_recipe(recipe)
  index, steps = _state(cfg)

  def f(x, w):
    return jnp.sum(
      int4_dot_general(
        x, w, DIMS, config=cfg, block_index=index, steps=steps, seed=5
      )
      * COT
    )

  dx, dw = jax.jit(jax.grad(f, argnums=(0, 1)))(X, W)
  # INT4 operands (~0.1-0.2 relative error each) plus the split and, for
  # leverage sampling, half the split rows dropped.
  assert rel_err(dx, COT @ W.T) < 0.6
  assert rel_err(dw, X.T @ COT) < 0.6


def test_census_jaxpr_and_static_shapes():
  cfg = int4_hq()
  index, steps = _state(cfg)

  def f(x, w, s):
    y = int4_dot_general(
      x, w, DIMS, config=cfg, block_index=index, steps=s, seed=1
    )
    return jnp.sum(y * COT)

  grad = jax.jit(jax.grad(f, argnums=(0, 1, 2)))
  rows = census(grad, X, W, steps).records
  kinds = {
    (r.role, r.lhs_format, r.rhs_format, r.lhs_dtype, r.rhs_dtype, r.count)
    for r in rows
  }
  assert kinds == {
    ("fwd", "int4_lsq_tensor", "int4_lsq_tensor", "int8", "int8", 1),
    ("dlhs", "int4x2_faithful_leverage", "int4_lsq_tensor", "int8", "int8", 2),
    ("drhs", "int4x2_faithful_leverage", "int4_lsq_tensor", "int8", "int8", 1),
  }
  jaxpr = jax.make_jaxpr(grad)(X, W, steps)
  text = str(jaxpr)
  assert "callback" not in text and "pure_callback" not in text
  dots = all_dots(jaxpr.jaxpr)
  assert dots and all(
    str(v.aval.dtype) == "int8" for e in dots for v in e.invars
  )


IMPLEMENTATION_CONFIGS = {
  "int4_hq": int4_hq(),  # LSQ, faithful split, leverage sampling
  "int4_hq_b32": int4_hq_b32(),  # 32 x 32 blocks, full split, every row
  "lsq_all_rows": Int4Config(name="lsq_all", sampling="all"),
  "blocks_16_clip_search_block_split": Int4Config(
    name="b16c",
    scale="absmax",
    block=16,
    clip_candidates=(1.0, 0.9, 0.8, 0.7),
    split="full",
    split_block=16,
    sampling="all",
  ),
}


# The Hopper GEMM has no 16 x 16 blocks (an int8 wgmma's K is 32).
MOSAIC_CONFIGS = ["int4_hq", "int4_hq_b32", "lsq_all_rows"]


@pytest.mark.parametrize(
  "name, implementation",
  [(name, "pallas") for name in IMPLEMENTATION_CONFIGS]
  + [(name, "mosaic") for name in MOSAIC_CONFIGS],
)
def test_implementations_agree_bit_for_bit(name, implementation):
  """ "pallas" and "mosaic" (kernels, interpreted here) against "xla": the
  output and every gradient (x, w and the LSQ steps) bit for bit, on a
  ragged batch of 3 x 20 tokens (K = 64, N = 40; Hadamard block 4)."""
  cfg = IMPLEMENTATION_CONFIGS[name]
  x = normal((3, 20, 64), seed=4)
  w = normal((64, 40), seed=5) * 0.1
  dims = (((2,), (0,)), ((), ()))
  steps = jnp.array([0.3, 0.05], jnp.float32)

  def loss(x, w, s, implementation):
    y = int4_dot_general(
      x, w, dims, config=cfg, block_index=jnp.int32(2), steps=s, seed=3,
      implementation=implementation,
    )  # fmt: skip
    return jnp.sum(y * y)

  results = {}
  for impl in ("xla", implementation):
    fn = jax.value_and_grad(loss, argnums=(0, 1, 2))
    results[impl] = jax.jit(fn, static_argnums=3)(x, w, steps, impl)
  for ours, ref in zip(
    jax.tree.leaves(results[implementation]), jax.tree.leaves(results["xla"])
  ):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
  if cfg.scale == "lsq":  # the learned steps get gradients
    assert float(jnp.abs(results["xla"][1][2]).max()) > 0


@pytest.mark.standard_promotion  # optax's bias correction
def test_quant_dot_general_keeps_block_and_learns_steps():
  rngs = nnx.Rngs(params=0, quant=1)
  layer = nnx.Linear(128, 48, rngs=rngs)
  quantize_model(layer, [QuantRule(path=".*", config="int4_hq")], rngs=rngs)
  dg = layer.dot_general
  assert isinstance(dg, QuantDotGeneral)
  optimizer = nnx.Optimizer(
    layer, __import__("optax").adam(1e-2), wrt=nnx.Param
  )

  @nnx.jit
  def step(layer, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(X) - 1.0) ** 2))(
      layer
    )
    optimizer.update(layer, grads)
    return loss

  losses = [float(step(layer, optimizer)) for _ in range(4)]
  assert losses[-1] < losses[0]
  index, calls = (int(v) for v in dg.hadamard[...])
  assert calls == 4
  init = dg.lsq_init[...]
  assert float(jnp.abs(dg.lsq_step[...]).min()) > 0  # the steps trained
  assert float(init[0]) > 0 and float(init[1]) > 0
  assert 0 <= index < 8


def test_bad_input():
  cfg = int4_hq_b32()
  with raises("must be even: lhs \\(4, 7\\)"):
    int4_dot_general(
      jnp.ones((4, 7)), jnp.ones((7, 2)), DIMS, config=cfg, seed=0
    )
  with raises(
    "no Hadamard block of \\(64,\\) divides the contraction size K=96"
  ):
    int4_dot_general(
      jnp.ones((4, 96)),
      jnp.ones((96, 2)),
      DIMS,
      config=Int4Config(scale="absmax", hadamard_blocks=(64,)),
      seed=0,
    )
  with raises("lhs has shape \\(4, 8\\) and dtype int32"):
    int4_dot_general(
      jnp.ones((4, 8), jnp.int32), jnp.ones((8, 2)), DIMS, config=cfg, seed=0
    )
  with raises("pass seed="):
    int4_dot_general(jnp.ones((4, 8)), jnp.ones((8, 2)), DIMS, config=cfg)
  with raises("learns its LSQ step sizes: pass steps="):
    int4_dot_general(
      jnp.ones((4, 8)), jnp.ones((8, 2)), DIMS, config=int4_hq(), seed=0
    )
  with raises("steps has shape \\(3,\\)"):
    int4_dot_general(
      jnp.ones((4, 8)),
      jnp.ones((8, 2)),
      DIMS,
      config=int4_hq(),
      seed=0,
      steps=jnp.ones(3),
    )
  b16 = IMPLEMENTATION_CONFIGS["blocks_16_clip_search_block_split"]
  with raises("implementation='mosaic' cannot run .*S in", NotImplementedError):
    int4_dot_general(
      jnp.ones((4, 64)),
      jnp.ones((64, 2)),
      DIMS,
      config=b16,
      seed=0,
      implementation="mosaic",
    )
  big = Int4Config(scale="absmax", block=256, sampling="all")
  with raises("implementation='pallas' cannot run .*S in", NotImplementedError):
    int4_dot_general(
      jnp.ones((4, 256)),
      jnp.ones((256, 2)),
      DIMS,
      config=big,
      seed=0,
      implementation="pallas",
    )
  out = int4_dot_general(  # the xla implementation takes any block
    jnp.ones((4, 256)), jnp.ones((256, 2)), DIMS, config=big, seed=0
  )
  assert out.shape == (4, 2)
  with raises(
    "per-tensor absmax INT4 scales have no kernel", NotImplementedError
  ):
    int4_dot_general(
      jnp.ones((4, 64)),
      jnp.ones((64, 2)),
      DIMS,
      config=Int4Config(scale="absmax", sampling="all"),
      seed=0,
      implementation="pallas",
    )
  with raises("is an INT4 recipe"):
    quantized_dot_general(
      jnp.ones((4, 8)), jnp.ones((8, 2)), DIMS, config="int4_hq"
    )
  with raises("split_block needs sampling='all'"):
    Int4Config(split_block=16)
  with raises("split_block=16 must equal block=32"):
    Int4Config(scale="absmax", block=32, split_block=16, sampling="all")
  with raises("clip_candidates searches a scale per S x S block"):
    Int4Config(clip_candidates=(1.0, 0.9))
  with raises("needs per-tensor scales"):
    Int4Config(scale="absmax", block=32, sampling="leverage")
  with raises("block needs scale='absmax'"):
    Int4Config(block=32, sampling="all")
