"""Operands in the shape the Hopper kernel wants: TMA-aligned codes, scale rows.

TMA copies tiles of an array only when each tiled dimension is a multiple of
its tile (8 rows; the swizzle along K), so codes are zero-padded to

    M -> round_up(M, 8),  N -> round_up(N, 8),  K -> round_up(K, 32)

(K -> round_up(K, 2 * packed_swizzle(tile_k)) when an operand is INT4:
its rows are half as many bytes) and nothing is copied when the shape is
already aligned (every real model shape is). Zero codes add nothing to any
sum, and the kernel's ragged CTA tiles beyond these shapes are zero-filled
by TMA itself.

Scales arrive shaped like ``QTensor.scale`` for their tile and leave as one
fp32 row per K chunk, ``(B, C, R)``: element ``[b, j, r]`` is the scale of row
``r`` in chunk ``j`` (``C`` = 1 without promotion). Rows are padded with
zeros to whole CTA tiles so that the epilogue's plain loads never leave the
array. This expansion is a small XLA op: ``C * R`` floats per operand.
"""

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import cdiv
from pallas_kernels.matmul_reference import chunk_scales
from pallas_kernels.mosaic._config import SWIZZLES
from pallas_kernels.tiles import Tile

ROW_ALIGN = 8  # TMA tile rows
K_ALIGN = 32  # the smallest 8-bit swizzle (bytes = elements)


def round_up(x: int, multiple: int) -> int:
  return cdiv(x, multiple) * multiple


def sub_chunks(chunk: int | None, tile_k: int = 128) -> int:
  """Promotions per pipeline step of ``tile_k``."""
  return 1 if chunk is None else tile_k // chunk


def choose_swizzle(k_padded: int, chunk: int | None) -> int:
  """The widest swizzle dividing K (and a promotion chunk's K slices)."""
  for swizzle in SWIZZLES:
    if k_padded % swizzle == 0 and (chunk is None or chunk % swizzle == 0):
      return swizzle
  raise AssertionError(f"K={k_padded} is padded to a multiple of {K_ALIGN}")


def packed_swizzle(tile_k: int) -> int:
  """The swizzle (bytes) of an INT4 operand's ``tile_k``-wide step: its rows
  are ``tile_k / 2`` bytes."""
  for swizzle in SWIZZLES:
    if (tile_k // 2) % swizzle == 0:
      return swizzle
  raise ValueError(
    f"an INT4 operand's K step of {tile_k} codes is {tile_k // 2} bytes, not "
    f"a multiple of any swizzle {SWIZZLES}; use a tile_k multiple of 64"
  )


MIN_K_STEPS = 2


def pad_k_steps(a, b, sa, sb, *, tile_k: int, n_sub: int, promoted: bool):
  """Zero-pads K to at least ``MIN_K_STEPS`` pipeline steps.

  A CTA that runs several output tiles with a one-step K pipeline computes
  wrong tiles after the first (the Mosaic GPU interpreter reports a barrier
  completing a phase that no thread observed; the root cause in the
  pipeline is not isolated), so K <= ``tile_k`` runs as two steps, the
  second of zero codes (and, when promoted, zero scales): it adds exactly
  nothing. ``a``, ``b``: (B, R, K) codes; ``sa``, ``sb``: their (B, C, R)
  scale rows. Only K <= ``tile_k`` pays (a copy of small operands).
  """
  k = a.shape[2]
  if k > tile_k:
    return a, b, sa, sb
  pad = ((0, 0), (0, 0), (0, MIN_K_STEPS * tile_k - k))
  a, b = jnp.pad(a, pad), jnp.pad(b, pad)
  if promoted:  # the pipeline reads n_sub scale rows per step
    pad = ((0, 0), (0, MIN_K_STEPS * n_sub - sa.shape[1]), (0, 0))
    sa, sb = jnp.pad(sa, pad), jnp.pad(sb, pad)
  return a, b, sa, sb


def pad_codes(q: jax.Array, k_align: int = K_ALIGN) -> jax.Array:
  """Zero-pads (B, R, K) codes to TMA-aligned R and K (no-op when aligned)."""
  _, r, k = q.shape
  pad_r, pad_k = round_up(r, ROW_ALIGN) - r, round_up(k, k_align) - k
  if pad_r == 0 and pad_k == 0:
    return q
  return jnp.pad(q, ((0, 0), (0, pad_r), (0, pad_k)))


def scale_rows(
  scale: jax.Array,
  tile: Tile,
  *,
  batch: int,
  rows: int,
  k: int,
  chunk: int | None,
  padded_rows: int,
) -> jax.Array:
  """(B, C, padded_rows) fp32: the scale of every row in every K chunk.

  Args:
    scale: the operand's scale grid (``QTensor.scale`` layout).
    tile: its tile: None, (1, None), (1, G) or (S, S).
    batch, rows, k: the operand is (batch, rows, k).
    chunk: the promotion chunk (None: one chunk over all of K).
    padded_rows: rows after padding to whole CTA tiles.
  """
  n_chunks = 1 if chunk is None else cdiv(k, chunk)
  picked = chunk_scales(scale, tile, rows, chunk, n_chunks)  # (C, B|1, rows)
  picked = jnp.broadcast_to(picked, (n_chunks, batch, rows))
  return lax.pad(
    jnp.swapaxes(picked, 0, 1),
    jnp.float32(0),
    ((0, 0, 0), (0, 0, 0), (0, padded_rows - rows, 0)),
  )
