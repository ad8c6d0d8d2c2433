"""Quantized states shard like their parameters and round-trip through orbax.

Two CPU devices (tests/conftest.py). Groups never straddle a shard, so a
state restored under another sharding gives the same update, bit for bit.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lowprec_jax.optim import (
  Codebook,
  Fp8Dre,
  QuantizedMoment,
  adamw_fp8,
  adamw_quantized,
  state_partition_specs,
  state_shardings,
)
from tests.helpers import rng
from tests.optim.helpers import bits

SPECS = {"w": P(None, "x"), "rows": P("x", None), "flat": P("x")}
SHAPES = {"w": (8, 256), "rows": (16, 128), "flat": (4, 64)}
ALL = lambda p: jax.tree.map(lambda _: True, p)  # noqa: E731
OPTIMIZERS = {
  "fp8": functools.partial(adamw_fp8, quantize_mask=ALL),
  "fp8_compact_4bit": functools.partial(
    adamw_quantized,
    mu_format=Fp8Dre(compact=True),
    nu_format=Codebook(bits=4, map="linear", signed=False, group=128),
    quantize_mask=ALL,
  ),
}


def _mesh():
  return Mesh(np.array(jax.devices()[:2]), ("x",))


def _params(mesh):
  return {
    k: jax.device_put(
      jnp.asarray(rng("p", k).standard_normal(s), jnp.float32),
      NamedSharding(mesh, SPECS[k]),
    )
    for k, s in SHAPES.items()
  }


def _grads(t):
  return {
    k: jnp.asarray(rng("g", k, t).standard_normal(s), jnp.float32)
    for k, s in SHAPES.items()
  }


def _moments(state):
  is_moment = lambda x: isinstance(x, QuantizedMoment)
  return [m for m in jax.tree.leaves(state, is_leaf=is_moment) if is_moment(m)]


@pytest.mark.standard_promotion
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_states_shard_like_their_parameters(name):
  """jit(init) with the derived shardings, then jit(update): every code and
  stat array keeps its parameter's spec (aligned layout), or the first-axis
  spec of the flat layout; XLA keeps those shardings through the update."""
  mesh = _mesh()
  tx = OPTIMIZERS[name](1e-2)
  params = _params(mesh)
  shardings = state_shardings(
    tx, params, jax.tree.map(lambda p: p.sharding, params)
  )
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  update = jax.jit(tx.update)
  for t in range(2):
    _, state = update(_grads(t), state, params)
  moments = _moments(state)
  assert len(moments) == 6
  for m in moments:
    name_of = {v: k for k, v in SHAPES.items()}[m.shape]
    spec = SPECS[name_of]
    codes, stats = (spec, spec) if name_of != "flat" else (P("x"), P("x"))
    assert m.codes.sharding.is_equivalent_to(
      NamedSharding(mesh, codes), m.codes.ndim
    )
    for s in m.stats.values():
      assert s.sharding.is_equivalent_to(NamedSharding(mesh, stats), s.ndim)
  # Each device holds whole groups: its share of w's codes is (8, 128).
  w = next(m for m in moments if m.shape == SHAPES["w"])
  shard_shapes = {s.data.shape for s in w.codes.addressable_shards}
  assert shard_shapes <= {(8, 128), (8, 64)}


@pytest.mark.parametrize(
  "shape, spec, match",
  [
    ((8, 384), P(None, "x"), r"per-shard extent 384/2 .* straddle"),
    ((6, 50), P("x"), r"per-shard length 300/2 .* straddle"),
    ((4, 64), P(None, "x"), "only along its first axis"),
  ],
)
def test_groups_never_straddle_shards(shape, spec, match):
  mesh = _mesh()
  tx = adamw_fp8(1e-2, quantize_mask=ALL)
  params = {"p": jnp.zeros(shape)}
  with pytest.raises(ValueError, match=match):
    state_partition_specs(tx, params, {"p": spec}, mesh)
  if spec == P(None, "x") and shape[1] % 2 == 0:  # init sees the sharding
    sharded = jax.device_put(params, NamedSharding(mesh, spec))
    with pytest.raises(ValueError, match=match):
      tx.init(sharded)


@pytest.mark.standard_promotion
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_checkpoint_continues_bit_exactly_under_any_sharding(name, tmp_path):
  """3 steps, save (sharded); restored with the same shardings, 2 more
  steps == 5 uninterrupted steps; restored fully replicated (parameters
  too), the next step gives the same update and state. The fp8 codes
  (stored as float8), uint8 4-bit codes and bfloat16 stats survive orbax."""
  mesh = _mesh()
  tx = OPTIMIZERS[name](1e-2)
  params = _params(mesh)
  shardings = state_shardings(
    tx, params, jax.tree.map(lambda p: p.sharding, params)
  )

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return updates, optax.apply_updates(params, updates), state

  def run(params, state, steps):
    for t in steps:
      _, params, state = step(params, state, _grads(t))
    return params, state

  start = jax.jit(tx.init, out_shardings=shardings)(params)
  straight = run(params, start, range(5))
  params3, state3 = run(params, start, range(3))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", state3)
  checkpointer.wait_until_finished()

  def restore(shardings):
    target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state3,
      shardings,
    )
    return checkpointer.restore(tmp_path / "ckpt", target)

  restored = restore(shardings)
  assert all(np.array_equal(a, b) for a, b in zip(bits(restored), bits(state3)))
  resumed = run(params3, restored, range(3, 5))
  for a, b in zip(bits(resumed), bits(straight)):
    assert np.array_equal(a, b)

  replicated = NamedSharding(mesh, P())
  restored = restore(jax.tree.map(lambda _: replicated, shardings))
  checkpointer.close()
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(restored))
  want = step(params3, state3, _grads(3))
  got = step(jax.device_put(params3, replicated), restored, _grads(3))
  for a, b in zip(bits(got), bits(want)):
    assert np.array_equal(a, b)


@pytest.mark.standard_promotion
def test_nnx_optimizer_updates_quantized_states():
  """nnx.Optimizer wraps each code/stat array of a quantized moment (the
  moment replaces the parameter's Variable), so updates keep the moments
  quantized step after step."""
  model = nnx.Linear(128, 256, rngs=nnx.Rngs(0))
  tx = adamw_fp8(1e-2, quantize_mask=ALL)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.asarray(rng("x").standard_normal((4, 128)), jnp.float32)

  @nnx.jit
  def step(model, optimizer):
    loss_fn = lambda m: jnp.mean(m(x) ** 2)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(3)]
  assert losses[2] < losses[0]
  moments = _moments(nnx.as_pure(optimizer.opt_state))
  assert {m.shape for m in moments} == {(128, 256), (256,)}
  assert {m.codes.dtype for m in moments} == {jnp.dtype(jnp.float8_e4m3fn)}
