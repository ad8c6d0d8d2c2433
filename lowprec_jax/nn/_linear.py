"""QuantLinear: ``nnx.Linear`` whose matmul is quantized."""

from flax import nnx

from lowprec_jax._implementations import ImplementationLike
from lowprec_jax.nn._dot_general import QuantDotGeneral
from lowprec_jax.ops._config import DotQuantConfig


class QuantLinear(nnx.Linear):
  """``nnx.Linear`` with a :class:`QuantDotGeneral` (same parameters).

  ``y = x . W + b`` where the forward GEMM and both backward GEMMs run
  quantized per ``config``; the fp32 master kernel is quantized on every
  call, so the optimizer keeps full-precision weights.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from lowprec_jax.nn import QuantLinear
    >>> layer = QuantLinear(64, 32, config="fp8_current", rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 64))).shape
    (4, 32)

  Args:
    in_features, out_features: as for ``nnx.Linear``.
    config: a :class:`~lowprec_jax.ops.DotQuantConfig` or a recipe name.
    implementation: passed to :func:`~lowprec_jax.ops.quantized_dot_general`.
    rngs: parameter initialisation and the stochastic-rounding seed.
    **kwargs: any other ``nnx.Linear`` argument except ``dot_general``.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    config: DotQuantConfig | str,
    implementation: ImplementationLike | None = None,
    rngs: nnx.Rngs,
    **kwargs,
  ):
    if "dot_general" in kwargs:
      raise ValueError("QuantLinear sets dot_general itself; use nnx.Linear")
    dot_general = QuantDotGeneral(
      config, implementation=implementation, rngs=rngs
    )
    super().__init__(
      in_features, out_features, dot_general=dot_general, rngs=rngs, **kwargs
    )
