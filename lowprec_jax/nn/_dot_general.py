"""QuantDotGeneral: a quantized ``dot_general`` for ``nnx.Linear``."""

import contextlib
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from lowprec_jax._implementations import ImplementationLike
from lowprec_jax.formats import random_bits
from lowprec_jax.formats._hadamard import hadamard_candidates
from lowprec_jax.ops._config import DotQuantConfig
from lowprec_jax.ops._dot_general import quantized_dot_general
from lowprec_jax.ops._int4_config import Int4Config
from lowprec_jax.ops._int4_dot import (
  canonical_operands,
  choose_block,
  initial_steps,
  int4_dot_general,
)
from lowprec_jax.ops._recipes import get_recipe


class QuantState(nnx.Variable):
  """Per-layer quantization state that is not trained.

  Holds ``[base_seed, call_counter]`` (uint32) for stochastic rounding. It is
  not an ``nnx.Param``, so ``nnx.Optimizer(..., wrt=nnx.Param)`` leaves it
  alone, and it is saved and restored with the rest of the model state, so a
  resumed run draws the same noise as an uninterrupted one.
  """


class HadamardState(nnx.Variable):
  """An INT4 layer's ``[Hadamard block index, calls]`` (int32): the block is
  searched on the first call (and every ``rechoose_every`` calls if set).
  Not trained; saved with the model."""


class LsqInit(nnx.Variable):
  """An INT4 layer's base LSQ steps of x and w (f32, ``2 mean|v| / sqrt(7)``
  of the batch of the first call, and again at every block search when
  ``rechoose_every`` is set). Not trained."""


class LsqStep(nnx.Param):
  """The learned part of an INT4 layer's LSQ steps, in log scale:
  ``steps = LsqInit * exp(LsqStep)`` (starts at 0).

  The paper trains the step itself with SGD. Under Adam an additive step
  would move by about the learning rate every update whatever its size (a
  weight's step is ~0.05, so 1e-3 is 2% per update, and it can cross zero);
  in log scale an update changes the step by a fraction of about the
  learning rate, and the step stays positive."""


class QuantDotGeneral(nnx.Module):
  """A drop-in ``dot_general`` that runs :func:`quantized_dot_general`.

  It has ``lax.dot_general``'s signature, so it plugs into
  ``nnx.Linear(dot_general=...)``. When the config rounds stochastically,
  each call draws a fresh seed ``hash(base_seed, counter)`` and increments
  the counter held in a :class:`QuantState`.

  An :class:`~lowprec_jax.ops.Int4Config` runs
  :func:`~lowprec_jax.ops.int4_dot_general` with the layer's state: the
  Hadamard block (:class:`HadamardState`, searched on the first call with
  that call's operands) and, for LSQ, the step sizes (:class:`LsqInit` plus
  the trained :class:`LsqStep`, an ``nnx.Param`` that
  ``nnx.Optimizer(..., wrt=nnx.Param)`` updates).

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
    config: DotQuantConfig | Int4Config | str,
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
      try:
        key = rngs.quant()
      except AttributeError as e:  # flax: "No RngStream named 'quant'"
        raise ValueError(
          f"config {self.config.name!r}"
          + (f" at {path!r}" if path else "")
          + " rounds stochastically and needs an RNG stream named 'quant' "
          "(or 'default'); the given rngs has neither: pass "
          "nnx.Rngs(params=..., quant=...)"
        ) from e
      base = jax.random.bits(key, (), jnp.uint32)
      self.state = QuantState(jnp.stack([base, jnp.zeros((), jnp.uint32)]))
    self.hadamard: HadamardState | None = nnx.data(None)
    self.lsq_init: LsqInit | None = nnx.data(None)
    self.lsq_step: LsqStep | None = nnx.data(None)
    if isinstance(self.config, Int4Config):
      self.hadamard = HadamardState(jnp.zeros((2,), jnp.int32))
      if self.config.scale == "lsq":
        self.lsq_init = LsqInit(jnp.ones((2,), jnp.float32))
        self.lsq_step = LsqStep(jnp.zeros((2,), jnp.float32))

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
    if isinstance(self.config, Int4Config):
      with layer_scope(self.path):
        return self._int4(lhs, rhs, dimension_numbers, preferred_element_type)
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

  def _int4(self, lhs, rhs, dimension_numbers, preferred_element_type):
    cfg = self.config
    x3, w3 = canonical_operands(lhs, rhs, dimension_numbers)
    x3, w3 = lax.stop_gradient(x3), lax.stop_gradient(w3)
    index, calls = self.hadamard[...][0], self.hadamard[...][1]
    search = calls == 0
    if cfg.rechoose_every:
      search = calls % cfg.rechoose_every == 0
    index = lax.cond(search, lambda: choose_block(x3, w3, cfg), lambda: index)
    self.hadamard[...] = jnp.stack([index, calls + 1])
    steps = None
    if cfg.scale == "lsq":
      candidates = hadamard_candidates(x3.shape[-1], cfg.hadamard_blocks)
      init = lax.cond(
        search,
        lambda: initial_steps(x3, w3, index, candidates),
        lambda: self.lsq_init[...],
      )
      self.lsq_init[...] = init
      steps = init * jnp.exp(self.lsq_step[...])
    return int4_dot_general(
      lhs,
      rhs,
      dimension_numbers,
      preferred_element_type=preferred_element_type,
      config=cfg,
      block_index=index,
      steps=steps,
      seed=self._next_seed(),
      implementation=self.implementation,
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
