"""quantize_model rewrites an unmodified model by regex rules on paths."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from lowprec_jax.nn import (
  QuantDotGeneral,
  QuantRule,
  QuantState,
  quantizable_paths,
  quantize_model,
  quantized_layers,
)
from lowprec_jax.ops import census
from tests.helpers import normal


class Tower(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Linear(16, 32, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(32, 32, rngs=rngs) for _ in range(3)])
    self.general = nnx.LinearGeneral(32, (2, 16), rngs=rngs)
    self.head = nnx.Linear(32, 4, rngs=rngs)

  def __call__(self, x):
    h = self.embed(x)
    for layer in self.layers:
      h = jax.nn.relu(layer(h))
    return self.head(self.general(h).reshape(h.shape))


def test_rules_first_match_wins_and_none_excludes():
  model = Tower(nnx.Rngs(0))
  before = nnx.state(model, nnx.Param)
  quantize_model(
    model,
    [
      QuantRule(path="head", config=None),
      QuantRule(path=r"layers/[02]", config="fp8_current"),
      QuantRule(path=".*", config="jetfire_int8"),
    ],
    rngs=nnx.Rngs(quant=1),
  )
  assert quantized_layers(model) == {
    "embed": "jetfire_int8",
    "general": "jetfire_int8",
    "head": "none",
    "layers/0": "fp8_current",
    "layers/1": "jetfire_int8",
    "layers/2": "fp8_current",
  }
  after = nnx.state(model, nnx.Param)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    assert a is b or bool(jnp.all(a == b))  # parameters untouched
  # One stochastic-rounding state per jetfire layer.
  assert len(jax.tree.leaves(nnx.state(model, QuantState))) == 3
  x = normal((8, 16))
  rep = census(lambda m, x: nnx.grad(lambda m: m(x).sum())(m), model, x)
  assert rep.total(quantized=True, role="fwd") == 5
  assert rep.total(quantized=False) >= 2  # the head, forward and backward


def test_rules_must_match_something():
  model = Tower(nnx.Rngs(0))
  with pytest.raises(
    ValueError,
    match=r"rules \['mlp/.\*'\] match no layer; "
    r"layer paths are \['embed', 'general', 'head'",
  ):
    quantize_model(model, [QuantRule(path="mlp/.*", config="fp8_current")])
  assert quantizable_paths(model)[:2] == ["embed", "general"]


def test_rule_validation():
  with pytest.raises(ValueError, match="is not a regex"):
    QuantRule(path="(", config="fp8_current")
  with pytest.raises(ValueError, match="recipe must be one of"):
    QuantRule(path=".*", config="int2")
  with pytest.raises(ValueError, match="rules must be QuantRule"):
    quantize_model(Tower(nnx.Rngs(0)), [".*"])
  with pytest.raises(ValueError, match="rounds stochastically"):
    quantize_model(
      Tower(nnx.Rngs(0)), [QuantRule(path=".*", config="jetfire_int8")]
    )


@pytest.mark.standard_promotion
def test_rewritten_model_trains_under_nnx_jit():
  import optax

  model = Tower(nnx.Rngs(0))
  quantize_model(
    model, [QuantRule(path=".*", config="jetfire_int8")], rngs=nnx.Rngs(1)
  )
  assert all(
    isinstance(m.dot_general, QuantDotGeneral)
    for _, m in nnx.iter_modules(model)
    if isinstance(m, nnx.Linear)
  )
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  x, y = normal((32, 16)), normal((32, 4), seed=1)

  @nnx.jit
  def step(m, opt):
    loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(m)
    opt.update(m, g)
    return loss

  losses = [float(step(model, opt)) for _ in range(30)]
  assert losses[-1] < 0.5 * losses[0]


def test_census_rows_name_layer_paths_identically_across_traces():
  """Every row names its layer, quantized or left in high precision, and
  two traces of one function give the same census (no per-trace ids)."""
  model = Tower(nnx.Rngs(0))
  quantize_model(
    model,
    [
      QuantRule(path="head", config=None),
      QuantRule(path="layers/.*", config="fp8_current"),
    ],
    rngs=nnx.Rngs(quant=1),
  )
  x = normal((8, 16))
  step = lambda m, x: nnx.grad(lambda m: m(x).sum())(m)
  first, second = census(step, model, x), census(step, model, x)
  assert first == second
  by_path = {}
  for r in first.records:
    by_path.setdefault(r.path, set()).add((r.role, r.quantized))
  assert set(by_path) == {"embed", "layers/0", "layers/1", "layers/2",
                          "general", "head"}  # fmt: skip
  for path in ("layers/0", "layers/1", "layers/2"):
    roles = {(role, True) for role in ("fwd", "dlhs", "drhs")}
    assert by_path[path] == roles, path
  for path in ("embed", "general", "head"):  # no rule, or config=None
    assert by_path[path] == {("unquantized", False)}, path
  assert "layers/1" in str(first) and "head" in str(first)
