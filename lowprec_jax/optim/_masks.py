"""Which parameters get quantized optimizer states.

The decision uses each parameter's *global* shape and its path, never a
shard's shape (bitsandbytes#2080 and torchao#4912 decided per shard, so the
state precision changed with the sharding). Inside ``jax.jit`` shapes are
global; inside ``shard_map`` they are not, so build masks outside it.

Kept in full precision by default (each is an industry lesson):

* tensors with fewer than 2 dimensions (biases, norm scales): tiny, and their
  gradients are the least uniform;
* tensors with fewer than ``min_size`` elements (bitsandbytes' 4096);
* embeddings and output heads, found by path (:data:`DEFAULT_EXCLUDE`:
  ``embed``, ``wte``, ``wpe``, ``lm_head``, a ``head`` scope, ``logit``
  as in ``logitdense``/``to_logits``, ``output_proj``): rows of rare tokens
  get tiny gradients, so one group's second moments span 10 orders of
  magnitude; codebook or plain-FP8 states round the small ones to zero and
  ``m / (sqrt(v) + eps)`` explodes (bitsandbytes#11 for embeddings; measured
  for a GPT's head in ``benchmarks/moment_mse``).

:func:`explain_quantize_mask` prints the decision for every leaf, and why.
"""

import re

import jax

DEFAULT_MIN_SIZE = 4096
DEFAULT_EXCLUDE = (
  r"(?i)embed|\bwte\b|\bwpe\b|lm_head|\bhead\b|logit|\boutput_proj\b"
)


def _path(keys) -> str:
  return jax.tree_util.keystr(keys, simple=True, separator="/")


def quantize_mask(
  *, min_size: int = DEFAULT_MIN_SIZE, exclude: str | None = DEFAULT_EXCLUDE
):
  """A mask function: ``params -> tree of bool`` (True: quantized states).

  A leaf is quantized when it has ``ndim >= 2``, at least ``min_size``
  elements, and its path (keys joined by ``/``) does not match the regular
  expression ``exclude``. The function's ``reasons(params)`` gives, per
  leaf, why it is kept in full precision ("" when quantized).
  """
  pattern = None if exclude is None else re.compile(exclude)

  def reason(keys, p) -> str:
    if p.ndim < 2:
      return f"ndim {p.ndim} < 2"
    if p.size < min_size:
      return f"{p.size} elements < min_size {min_size}"
    match = pattern.search(_path(keys)) if pattern is not None else None
    return f"path matches {match.group(0)!r}" if match else ""

  def mask(params):
    return jax.tree.map(lambda r: not r, reasons(params))

  def reasons(params):
    return jax.tree_util.tree_map_with_path(reason, params)

  mask.reasons = reasons
  return mask


default_quantize_mask = quantize_mask()
default_quantize_mask.__doc__ = (
  "The default mask: ``quantize_mask(min_size=4096, exclude=DEFAULT_EXCLUDE)``."
)


def explain_quantize_mask(params, quantize_mask=None) -> str:
  """A table of every leaf of ``params``: path, shape, and whether its Adam
  moments are quantized or kept in fp32, with the reason when the mask is
  one of :func:`quantize_mask`'s (None: :data:`default_quantize_mask`; a
  tree of bools or any other callable is applied as the optimizer would).

  >>> import jax.numpy as jnp
  >>> print(explain_quantize_mask({"head": {"kernel": jnp.zeros((128, 64))},
  ...                              "mlp": {"kernel": jnp.zeros((128, 64))}}))
  path         shape      moments
  head/kernel  (128, 64)  fp32 (path matches 'head')
  mlp/kernel   (128, 64)  quantized
  """
  mask = default_quantize_mask if quantize_mask is None else quantize_mask
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if hasattr(mask, "reasons"):
    why = jax.tree.leaves(mask.reasons(params))
  else:
    flags = mask(params) if callable(mask) else mask
    why = ["" if f else "mask is False" for f in jax.tree.leaves(flags)]
  if len(why) != len(leaves):
    raise ValueError(
      f"quantize_mask gives {len(why)} decisions for {len(leaves)} leaves; "
      "it must have the structure of params"
    )
  rows = [("path", "shape", "moments")] + [
    (_path(k), str(tuple(p.shape)), f"fp32 ({w})" if w else "quantized")
    for (k, p), w in zip(leaves, why)
  ]
  widths = [max(len(r[i]) for r in rows) for i in range(2)]
  return "\n".join(
    f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c}" for a, b, c in rows
  )
