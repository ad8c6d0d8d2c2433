"""Linen adapter: ``nn.Dense(dot_general_cls=linen_dot_general_cls(...))``."""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from lowprec_jax._implementations import ImplementationLike
from lowprec_jax.ops._config import DotQuantConfig
from lowprec_jax.ops._dot_general import quantized_dot_general
from lowprec_jax.ops._recipes import get_recipe


class LinenQuantDotGeneral(nn.Module):
  """A Linen module with ``lax.dot_general``'s call signature.

  Stochastic rounding draws its seed from the ``quant`` RNG collection:
  ``model.apply(variables, x, rngs={"quant": key})``.
  """

  config: DotQuantConfig | str
  implementation: ImplementationLike | None = None

  def __post_init__(self):
    # A recipe name is resolved once, here, not on every call.
    object.__setattr__(self, "config", get_recipe(self.config))
    if not isinstance(self.config, DotQuantConfig):
      raise NotImplementedError(
        f"recipe {self.config.name!r} (INT4) is not available for Linen yet: "
        "its Hadamard block and LSQ steps are per-layer state that only "
        "lowprec_jax.nn.QuantDotGeneral (NNX) keeps"
      )
    super().__post_init__()

  @nn.compact
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
    config = self.config
    seed = None
    if config.needs_seed:
      seed = jax.random.bits(self.make_rng("quant"), (), jnp.uint32)
    return quantized_dot_general(
      lhs,
      rhs,
      dimension_numbers,
      precision,
      preferred_element_type,
      out_sharding=out_sharding,
      config=config,
      implementation=self.implementation,
      seed=seed,
    )


def linen_dot_general_cls(
  config: DotQuantConfig | str,
  implementation: ImplementationLike | None = None,
):
  """Returns a ``dot_general_cls`` for ``nn.Dense`` / ``nn.DenseGeneral``.

  The recipe name is resolved here, once. Linen names each module's scope,
  so the census rows carry the layers' paths.
  """
  return functools.partial(
    LinenQuantDotGeneral,
    config=get_recipe(config),
    implementation=implementation,
  )
