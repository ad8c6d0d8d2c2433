"""The block-scaled GEMM kernel behind the INT8 and FP8 matmuls.

For K-major operands ``a`` (B, M, K) and ``b`` (B, N, K), each program owns a
``block_m x block_n`` output tile and loops over K in chunks of ``chunk``:

    scales vary along K (1 x G groups, S x S blocks; G = S = chunk):
        acc += float(a_c . b_c) * (sa_c[m] * sb_c[n])
    scales constant along K (per-tensor, per-row):
        acc += a_c . b_c,     out = acc * (sa[m] * sb[n])

with the exact int32 (INT8) or f32 (FP8) chunk dot, f32 accumulation, and
the same association as :func:`pallas_kernels.matmul_reference.scaled_matmul`
(the ``"xla"`` GEMM and the kernels' twin) so that results agree bit for bit
wherever that dot is exact. Loads are masked
(K tail, M and N edges), so padding never enters a sum. The epilogue casts
to ``out_dtype`` or requantizes the f32 tile to INT8 ``out_block`` squares,
exactly as the quantize kernels would quantize the (B, M, N) result.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.experimental import pallas as pl

from pallas_kernels import _layout as L
from pallas_kernels._common import cdiv
from pallas_kernels.numerics import (
  F32_MAX,
  NumberGrid,
  finite_absmax,
  tile_scale,
)
from pallas_kernels.tiles import TileKind

# Scales of these kinds change every ``chunk`` = G columns of K (1 x G groups,
# G x G blocks); TENSOR and ROWS scales are constant along K.
_PER_CHUNK = (TileKind.ROW_GROUPS, TileKind.BLOCKS)
_NT = (((1,), (1,)), ((), ()))


def warps_for(block_m: int, block_n: int, minimum: int) -> int:
  """Triton warps for an f32 accumulator tile: at least ``minimum``, and one
  per 2048 accumulator elements (128 x 128 gets 8, 64 registers a thread)."""
  return max(minimum, block_m * block_n // 2048)


@dataclasses.dataclass(frozen=True)
class MatmulPlan:
  """Static description of one block-scaled GEMM kernel."""

  bmnk: tuple[int, int, int, int]
  a_scales: TileKind
  b_scales: TileKind
  chunk: int  # K per loop step; the scale group when scales vary along K
  block_m: int
  block_n: int
  accumulator: np.dtype  # int32 for INT8, float32 for FP8
  upcast: np.dtype | None  # dot dtype when the operand dtypes differ
  out_dtype: np.dtype
  out_block: int | None = None
  stochastic: bool = False
  num_warps: int = 4
  num_stages: int = 2

  @property
  def per_chunk(self) -> bool:
    """True when the scales change along K (rescale every chunk)."""
    return self.a_scales in _PER_CHUNK or self.b_scales in _PER_CHUNK

  @property
  def chunks(self) -> int:
    return cdiv(self.bmnk[3], self.chunk)

  @property
  def grid(self) -> tuple[int, int, int]:
    b, m, n, _ = self.bmnk
    return b, cdiv(m, self.block_m), cdiv(n, self.block_n)


def _operand_spec(rows: int, k_extent: int, axis: int) -> pl.BlockSpec:
  index = (
    (lambda b, i, j: (b, i, 0)) if axis == 1 else (lambda b, i, j: (b, j, 0))
  )
  return pl.BlockSpec((None, rows, k_extent), index)


def _scale_spec(kind: TileKind, rows: int, chunk: int, n_cols: int, axis: int):
  if kind is TileKind.TENSOR:
    return pl.BlockSpec((None, 1, 1), lambda b, i, j: (0, 0, 0))
  block_rows = rows // chunk if kind is TileKind.BLOCKS else rows
  cols = 1 if kind is TileKind.ROWS else n_cols
  return _operand_spec(block_rows, cols, axis)


def in_specs(plan: MatmulPlan) -> list[pl.BlockSpec]:
  """BlockSpecs of (a, a_scales, b, b_scales)."""
  k_extent = plan.chunks * plan.chunk
  n_cols = plan.chunks
  return [
    _operand_spec(plan.block_m, k_extent, 1),
    _scale_spec(plan.a_scales, plan.block_m, plan.chunk, n_cols, 1),
    _operand_spec(plan.block_n, k_extent, 2),
    _scale_spec(plan.b_scales, plan.block_n, plan.chunk, n_cols, 2),
  ]


def _row_scales(ref, kind, c, program, rows, total, group) -> Array:
  """This program's scales for K chunk ``c``: (rows, 1), or (1, 1) per-tensor.

  Per-row scales ignore ``c``; S x S block scales are repeated S times.
  """
  if kind is TileKind.TENSOR:
    return ref[...]
  if kind is TileKind.BLOCKS:
    count = rows // group
    index = program * count + lax.broadcasted_iota(jnp.int32, (count, 1), 0)
    mask = index < cdiv(total, group)
    values = L.load(ref.at[:, pl.ds(c, 1)], mask)
    return L.expand_rows(values, group)
  index = program * rows + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
  sliced = ref if kind is TileKind.ROWS else ref.at[:, pl.ds(c, 1)]
  return L.load(sliced, index < total)


def kernel(a_ref, as_ref, b_ref, bs_ref, *refs, plan: MatmulPlan):
  """One output tile: the K loop, then the epilogue."""
  refs = list(refs)
  seed_ref = refs.pop(0) if plan.stochastic else None
  _, m, n, k = plan.bmnk
  i, j = pl.program_id(1), pl.program_id(2)
  bm, bn, chunk = plan.block_m, plan.block_n, plan.chunk
  rows = i * bm + lax.broadcasted_iota(jnp.int32, (bm, 1), 0)
  cols = j * bn + lax.broadcasted_iota(jnp.int32, (1, bn), 1)
  b_rows = j * bn + lax.broadcasted_iota(jnp.int32, (bn, 1), 0)

  def a_scales(c):
    return _row_scales(as_ref, plan.a_scales, c, i, bm, m, chunk)

  def b_scales(c):
    return _row_scales(bs_ref, plan.b_scales, c, j, bn, n, chunk).reshape(1, -1)

  def step(c, acc):
    k0 = c * chunk
    k_ok = k0 + lax.broadcasted_iota(jnp.int32, (1, chunk), 1) < k
    a = L.load(a_ref.at[:, pl.ds(k0, chunk)], (rows < m) & k_ok)
    b = L.load(b_ref.at[:, pl.ds(k0, chunk)], (b_rows < n) & k_ok)
    if plan.upcast is not None:
      a, b = a.astype(plan.upcast), b.astype(plan.upcast)
    p = lax.dot_general(a, b, _NT, preferred_element_type=plan.accumulator)
    p = p.astype(jnp.float32)
    if plan.per_chunk:
      p = p * (a_scales(c) * b_scales(c))
    return acc + p

  acc = jnp.zeros((bm, bn), jnp.float32)
  acc = lax.fori_loop(0, plan.chunks, step, acc)
  if not plan.per_chunk:
    acc = acc * (a_scales(0) * b_scales(0))
  mask = (rows < m) & (cols < n)
  if plan.out_block is None:
    (out_ref,) = refs
    L.store(out_ref, acc.astype(plan.out_dtype), mask)
  else:
    _requantize(acc, mask, rows, cols, seed_ref, plan, *refs)


def _requantize(acc, mask, rows, cols, seed_ref, plan, q_ref, s_ref):
  """Epilogue: INT8 codes and scales of ``out_block`` squares of the tile."""
  ob = plan.out_block
  _, m, n, _ = plan.bmnk
  v = jnp.where(mask, acc, 0.0)
  nr, nc = plan.block_m // ob, plan.block_n // ob
  absmax, ok = finite_absmax(v.reshape(nr, ob, nc, ob), axis=(1, 3))
  grid = NumberGrid.int8()
  scale, inverse = tile_scale(absmax, ok, grid.qmax)
  inverse = L.expand_cols(L.expand_rows(inverse, ob), ob)
  codes = L.tile_codes(
    v, inverse, inverse <= F32_MAX, rows, cols, m, seed_ref, grid
  )
  L.store(q_ref, codes, mask)
  i, j = pl.program_id(1), pl.program_id(2)
  s_rows = i * nr + lax.broadcasted_iota(jnp.int32, (nr, 1), 0)
  s_cols = j * nc + lax.broadcasted_iota(jnp.int32, (1, nc), 1)
  L.store(s_ref, scale, (s_rows < cdiv(m, ob)) & (s_cols < cdiv(n, ob)))


def out_specs(plan: MatmulPlan):
  """(struct, spec) of each output: the tile, or INT8 codes and scales."""
  b, m, n, _ = plan.bmnk
  tile = pl.BlockSpec(
    (None, plan.block_m, plan.block_n), lambda b, i, j: (b, i, j)
  )
  if plan.out_block is None:
    return [(L.out_struct((b, m, n), plan.out_dtype), tile)]
  ob = plan.out_block
  s_spec = pl.BlockSpec(
    (None, plan.block_m // ob, plan.block_n // ob), lambda b, i, j: (b, i, j)
  )
  return [
    (L.out_struct((b, m, n), np.int8), tile),
    (L.out_struct((b, cdiv(m, ob), cdiv(n, ob)), jnp.float32), s_spec),
  ]


@functools.partial(jax.jit, static_argnames=("plan", "name", "interpret"))
def run(a_q, a_s, b_q, b_s, seed, *, plan: MatmulPlan, name: str, interpret):
  """Runs the kernel; returns the output tile array(s) as a tuple."""
  specs = in_specs(plan)
  args = [a_q, a_s, b_q, b_s]
  if plan.stochastic:
    args.append(seed)
    specs.append(pl.BlockSpec((1,), lambda b, i, j: (0,)))
  return L.call(
    functools.partial(kernel, plan=plan),
    grid=plan.grid,
    in_specs=specs,
    outs=out_specs(plan),
    tuning=(plan.num_warps, plan.num_stages),
    interpret=interpret,
    name=name,
    args=args,
  )
