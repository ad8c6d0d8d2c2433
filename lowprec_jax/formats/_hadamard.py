"""The Hadamard quantizer (HQ) and its per-layer block-size search.

HQ quantizes ``X H`` instead of ``X`` (:mod:`pallas_kernels.hadamard`: ``H``
block-diagonal normalised Sylvester along K), and the weight as ``W H``;
since ``H H^T = I`` the GEMM of the two rotated operands is ``X W^T``.

The block size is chosen per layer as in the paper's ``--dynamic`` mode: for
every candidate ``b`` (powers of two dividing K), quantize both rotated
operands and pick the ``b`` minimising

    ||X_hat - X||_F * ||W_hat - W||_F,   X_hat = Q(X H) H^T.

``H`` is orthogonal, so ``||Q(X H) H^T - X||_F = ||Q(X H) - X H||_F``: the
error is measured in the rotated domain and nothing is rotated back (the
same number up to f32 rounding). The search runs under ``jit`` with static
shapes: every candidate is evaluated and the winner is returned as an index
into the static candidate tuple, for ``lax.switch`` (no host round trip).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

from lowprec_jax.formats._format import Int4, QuantFormat, Rounding
from lowprec_jax.formats._quantize import fake_quantize, quantize
from pallas_kernels.checks import check_float_array
from pallas_kernels.hadamard import (
  HADAMARD_BLOCKS,
  block_hadamard,
  check_hadamard_block,
)


def hadamard_candidates(k: int, blocks=HADAMARD_BLOCKS) -> tuple[int, ...]:
  """The candidate block sizes for contraction size ``k``: those of
  ``blocks`` that divide it (1 always does)."""
  for b in blocks:
    check_hadamard_block(b, name="candidate block")
  return tuple(b for b in blocks if k % b == 0)


FakeQuantize = Callable[[Array], Array]


def absmax_int4(x: Array) -> Array:
  """Per-tensor absmax INT4, round to nearest: the default search quantizer."""
  return fake_quantize(x, Int4.per_tensor())


def rotation_error(
  x: Array, block: int, quantizer: FakeQuantize = absmax_int4
) -> Array:
  """``||Q(x H_block) - x H_block||_F`` (f32 scalar) for a fake quantizer
  ``Q`` (rotated values -> dequantized values)."""
  rotated = block_hadamard(x, block)
  return jnp.linalg.norm(quantizer(rotated).astype(jnp.float32) - rotated)


def choose_hadamard_block(
  x: Array,
  w: Array,
  *,
  quantizer: FakeQuantize = absmax_int4,
  candidates: tuple[int, ...] | None = None,
) -> tuple[Array, Array, tuple[int, ...]]:
  """The block size minimising ``||X_hat - X|| * ||W_hat - W||``.

  Args:
    x: (..., K) activations of a calibration batch.
    w: (..., K) weights, contraction on the last axis.
    quantizer: the fake quantizer whose error is measured (e.g. LSQ at its
      initial step: ``lambda v: lsq_fake_quantize(v, lsq_initial_step(v))``).
    candidates: block sizes to try; default: every power of two up to 1024
      dividing K.

  Returns:
    (index into the candidates (int32 scalar), the products of errors per
    candidate (f32), the static candidate tuple).
  """
  check_float_array("x", x)
  check_float_array("w", w)
  if x.ndim == 0 or w.ndim == 0 or x.shape[-1] != w.shape[-1]:
    raise ValueError(
      f"x (shape {x.shape}) and w (shape {w.shape}) must share the "
      "contraction size on their last axes"
    )
  k = x.shape[-1]
  candidates = hadamard_candidates(k, candidates or HADAMARD_BLOCKS)
  if not candidates:
    raise ValueError(f"no candidate block divides the contraction size {k}")
  errors = jnp.stack(
    [
      rotation_error(x, b, quantizer) * rotation_error(w, b, quantizer)
      for b in candidates
    ]
  )
  return jnp.argmin(errors).astype(jnp.int32), errors, candidates


def hadamard_quantize(
  x: Array,
  block: int,
  format: QuantFormat = Int4.per_tensor(),
  *,
  rounding: Rounding = "nearest",
  seed=None,
):
  """``quantize(x H_block, format)``: the HQ quantizer with absmax scales.

  ``block`` must divide x's last axis. The result's ``dequantize()`` is in
  the rotated domain (multiply by ``H^T``, i.e. apply
  :func:`pallas_kernels.hadamard.block_hadamard` again, to come back).
  """
  check_float_array("x", x)
  if x.ndim == 0:
    raise ValueError("hadamard_quantize needs an array with a last axis")
  check_hadamard_block(block, x.shape[-1])
  rotated = block_hadamard(x, block)
  return quantize(rotated, format, rounding=rounding, seed=seed)


def switch_on_block(index: Array, candidates: tuple[int, ...], fn, *args):
  """``fn(candidates[index], *args)`` with a traced ``index`` (lax.switch
  over the static candidates; every branch has static shapes)."""
  branches = [lambda *a, b=b: fn(b, *a) for b in candidates]
  return jax.lax.switch(index, branches, *args)
