"""QuantDotGeneral: a quantized ``dot_general`` for ``nnx.Linear``."""

import contextlib
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lowprec_jax._implementations import ImplementationLike
from lowprec_jax.formats import random_bits
from lowprec_jax.ops._config import DotQuantConfig
from lowprec_jax.ops._dot_general import quantized_dot_general
from lowprec_jax.ops._recipes import get_recipe


class QuantState(nnx.Variable):
  """Per-layer quantization state that is not trained.

  Holds ``[base_seed, call_counter]`` (uint32) for stochastic rounding. It is
  not an ``nnx.Param``, so ``nnx.Optimizer(..., wrt=nnx.Param)`` leaves it
  alone, and it is saved and restored with the rest of the model state, so a
  resumed run draws the same noise as an uninterrupted one.
  """


class QuantDotGeneral(nnx.Module):
  """A drop-in ``dot_general`` that runs :func:`quantized_dot_general`.

  It has ``lax.dot_general``'s signature, so it plugs into
  ``nnx.Linear(dot_general=...)``. When the config rounds stochastically,
  each call draws a fresh seed ``hash(base_seed, counter)`` and increments
  the counter held in a :class:`QuantState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from lowprec_jax.nn import QuantDotGeneral
    >>> rngs = nnx.Rngs(params=0, quant=1)
    >>> layer = nnx.Linear(
    ...   64, 32, dot_general=QuantDotGeneral("jetfire_int8", rngs=rngs),
    ...   rngs=rngs)
    >>> layer(jnp.ones((4, 64))).shape
    (4, 32)

  Args:
    config: a :class:`~lowprec_jax.ops.DotQuantConfig` or a recipe name.
    implementation: passed to :func:`quantized_dot_general`.
    rngs: needed when the config rounds stochastically; the base seed is
      drawn from its ``quant`` stream (or ``default``).
    path: the layer's module path; calls run in a ``jax.named_scope`` of it,
      so the census names the layer (set by :func:`quantize_model`).
  """

  def __init__(
    self,
    config: DotQuantConfig | str,
    *,
    implementation: ImplementationLike | None = None,
    rngs: nnx.Rngs | None = None,
    path: str = "",
  ):
    self.config = get_recipe(config)
    self.implementation = implementation
    self.path = path
    self.state: QuantState | None = nnx.data(None)
    if self.config.needs_seed:
      if rngs is None:
        raise ValueError(
          f"config {self.config.name!r} rounds stochastically; pass "
          "rngs=nnx.Rngs(quant=...) to seed it"
        )
      base = jax.random.bits(rngs.quant(), (), jnp.uint32)
      self.state = QuantState(jnp.stack([base, jnp.zeros((), jnp.uint32)]))

  def _next_seed(self):
    if self.state is None:
      return None
    base, counter = self.state[...][0], self.state[...][1]
    self.state[...] = jnp.stack([base, counter + jnp.uint32(1)])
    return random_bits(base, counter, jnp.uint32(0))

  def __call__(
    self,
    lhs,
    rhs,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
    *,
    out_sharding=None,
  ):
    with layer_scope(self.path):
      return quantized_dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision,
        preferred_element_type,
        out_sharding=out_sharding,
        config=self.config,
        implementation=self.implementation,
        seed=self._next_seed(),
      )


def layer_scope(path: str):
  """A ``jax.named_scope`` of a layer's module path (nothing for "")."""
  return jax.named_scope(path) if path else contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class ScopedDotGeneral:
  """A layer's own ``dot_general`` (e.g. ``lax.dot_general``) run in a
  named scope of the layer's path, so the census names layers that stay in
  high precision. Static and hashable, like the function it wraps."""

  dot_general: Callable
  path: str

  def __call__(self, *args, **kwargs):
    with layer_scope(self.path):
      return self.dot_general(*args, **kwargs)
