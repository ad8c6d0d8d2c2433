"""Which parameters get quantized optimizer states.

The decision uses each parameter's *global* shape and its path, never a
shard's shape (bitsandbytes#2080 and torchao#4912 decided per shard, so the
state precision changed with the sharding). Inside ``jax.jit`` shapes are
global; inside ``shard_map`` they are not, so build masks outside it.

Kept in full precision by default (each is an industry lesson):

* tensors with fewer than 2 dimensions (biases, norm scales): tiny, and their
  gradients are the least uniform;
* tensors with fewer than ``min_size`` elements (bitsandbytes' 4096);
* embeddings and the LM head, found by path (``embed``, ``wte``, ``wpe``,
  ``lm_head``): rows of rare tokens get tiny gradients, so one group's second
  moments span 10 orders of magnitude; codebook or plain-FP8 states round the
  small ones to zero and ``m / (sqrt(v) + eps)`` explodes (bitsandbytes#11
  for embeddings; measured for a GPT's head in ``benchmarks/moment_mse``).
"""

import re

import jax

DEFAULT_MIN_SIZE = 4096
DEFAULT_EXCLUDE = r"(?i)embed|\bwte\b|\bwpe\b|lm_head"


def _path(keys) -> str:
  return jax.tree_util.keystr(keys, simple=True, separator="/")


def quantize_mask(
  *, min_size: int = DEFAULT_MIN_SIZE, exclude: str | None = DEFAULT_EXCLUDE
):
  """A mask function: ``params -> tree of bool`` (True: quantized states).

  A leaf is quantized when it has ``ndim >= 2``, at least ``min_size``
  elements, and its path (keys joined by ``/``) does not match the regular
  expression ``exclude``.
  """
  pattern = None if exclude is None else re.compile(exclude)

  def mask(params):
    def keep(keys, p) -> bool:
      if p.ndim < 2 or p.size < min_size:
        return False
      return pattern is None or not pattern.search(_path(keys))

    return jax.tree_util.tree_map_with_path(keep, params)

  return mask


default_quantize_mask = quantize_mask()
default_quantize_mask.__doc__ = (
  "The default mask: ``quantize_mask(min_size=4096, exclude=DEFAULT_EXCLUDE)``."
)
