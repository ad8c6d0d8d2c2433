"""quantize_model: rewrite an unmodified NNX model by regex rules on paths."""

import dataclasses
import re
from collections.abc import Sequence

from flax import nnx
from jax import lax

from lowprec_jax._implementations import ImplementationLike
from lowprec_jax.nn._dot_general import QuantDotGeneral, ScopedDotGeneral
from lowprec_jax.ops._config import DotQuantConfig
from lowprec_jax.ops._recipes import get_recipe

# Modules whose matmul goes through ``self.dot_general``.
QUANTIZABLE = (nnx.Linear, nnx.LinearGeneral)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantRule:
  """Quantize every layer whose path matches ``path``.

  Args:
    path: a regular expression matched in full (``re.fullmatch``) against
      the module path joined with "/", e.g. ``"blocks/\\d+/mlp/.*"``.
    config: a config or recipe name, resolved here once (the rule holds the
      :class:`DotQuantConfig`); ``None`` leaves matching layers in high
      precision (useful before a catch-all rule).
    implementation: passed to :func:`quantized_dot_general`.
  """

  path: str
  config: DotQuantConfig | str | None
  implementation: ImplementationLike | None = None

  def __post_init__(self):
    try:
      re.compile(self.path)
    except re.error as e:
      raise ValueError(f"QuantRule.path {self.path!r} is not a regex: {e}")
    if self.config is not None:
      object.__setattr__(self, "config", get_recipe(self.config))


def _path(parts) -> str:
  return "/".join(str(p) for p in parts)


def quantizable_paths(model: nnx.Module) -> list[str]:
  """Paths of the layers :func:`quantize_model` can rewrite."""
  return [
    _path(p) for p, m in nnx.iter_modules(model) if isinstance(m, QUANTIZABLE)
  ]


def quantize_model(
  model: nnx.Module,
  rules: Sequence[QuantRule],
  *,
  rngs: nnx.Rngs | None = None,
) -> nnx.Module:
  """Sets a :class:`QuantDotGeneral` on every layer a rule matches, in place.

  The first matching rule decides each layer. Parameters are untouched, so a
  trained bf16 model can be quantized and a quantized one inspected with
  :func:`quantized_layers`. Every quantizable layer, quantized or not, then
  runs its matmul in a ``jax.named_scope`` of its module path, so each row
  of :func:`lowprec_jax.ops.census` names the layer it came from (layers
  left in high precision included).

  Args:
    model: any NNX module tree containing ``nnx.Linear``/``LinearGeneral``.
    rules: tried in order.
    rngs: seeds stochastic rounding (needed if a matched config uses it).

  Returns:
    ``model`` (rewritten in place).

  Raises:
    ValueError: a rule that matches no layer (listing the layer paths), or a
      stochastic config without ``rngs``.
  """
  rules = list(rules)
  for rule in rules:
    if not isinstance(rule, QuantRule):
      raise ValueError(f"rules must be QuantRule objects, got {rule!r}")
  layers = [
    (_path(p), m)
    for p, m in nnx.iter_modules(model)
    if isinstance(m, QUANTIZABLE)
  ]
  matched = [
    next((r for r in rules if re.fullmatch(r.path, path)), None)
    for path, _ in layers
  ]
  unused = [r.path for r in rules if not any(m is r for m in matched)]
  if unused:  # checked before any layer changes
    raise ValueError(
      f"quantize_model rules {unused} match no layer; layer paths are "
      f"{[p for p, _ in layers]}"
    )
  for (path, layer), rule in zip(layers, matched):
    if rule is not None and rule.config is not None:
      layer.dot_general = nnx.data(
        QuantDotGeneral(
          rule.config,
          implementation=rule.implementation,
          rngs=rngs,
          path=path,
        )
      )
    else:
      layer.dot_general = _scoped(layer.dot_general, path)
  return model


def _scoped(dot_general, path: str):
  """``dot_general`` running in the named scope of ``path``."""
  if isinstance(dot_general, QuantDotGeneral):
    dot_general.path = path
    return dot_general
  if isinstance(dot_general, ScopedDotGeneral):
    dot_general = dot_general.dot_general
  return ScopedDotGeneral(dot_general or lax.dot_general, path)


def quantized_layers(model: nnx.Module) -> dict[str, str]:
  """Maps each quantizable layer path to its config name ("none" if plain)."""
  result = {}
  for parts, layer in nnx.iter_modules(model):
    if isinstance(layer, QUANTIZABLE):
      dg = layer.dot_general
      name = dg.config.name if isinstance(dg, QuantDotGeneral) else "none"
      result[_path(parts)] = name
  return result
