"""The block-scaled GEMM kernel behind the INT8 and FP8 matmuls.

For K-major operands ``a`` (B, M, K) and ``b`` (B, N, K), each program owns a
``block_m x block_n`` output tile and loops over K in chunks of ``chunk``:

    scales vary along K (1 x G groups, S x S blocks; G = S = chunk):
        acc += float(a_c . b_c) * (sa_c[m] * sb_c[n])
    scales constant along K (per-tensor, per-row):
        acc += a_c . b_c,     out = acc * (sa[m] * sb[n])

with the exact int32 (INT8) or f32 (FP8) chunk dot, f32 accumulation (int32
for integer operands whose scales are constant along K), and
the same association as :func:`pallas_kernels.matmul_reference.scaled_matmul`
(the ``"xla"`` GEMM and the kernels' twin) so that results agree bit for bit
wherever that dot is exact. Loads are masked
(K tail, M and N edges), so padding never enters a sum. The epilogue casts
to ``out_dtype`` or requantizes the f32 tile to INT8 ``out_block`` squares,
exactly as the quantize kernels would quantize the (B, M, N) result.

Operands of the INT4 GEMMs (:mod:`pallas_kernels.int4_matmul`) may also be

* **packed**: INT4 codes two per byte along the stored last axis
  (:mod:`pallas_kernels.int4`), unpacked to int8 in registers after the
  load (:func:`pallas_kernels.int4.unpack_pairs`);
* **transposed**: stored contraction-major, (B, K, M) for ``a`` and
  (B, K, N) for ``b`` with S x S block or per-tensor scales, so that a
  backward GEMM reads the forward's saved operand as it is (the dot
  contracts the tile's first axis instead of transposing in memory).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _layout as L
from pallas_kernels._common import cdiv
from pallas_kernels.int4 import unpack_pairs
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
  a_packed: bool = False
  b_packed: bool = False
  a_transposed: bool = False
  b_transposed: bool = False

  def __post_init__(self):
    for side in ("a", "b"):
      transposed = getattr(self, f"{side}_transposed")
      kind = getattr(self, f"{side}_scales")
      if transposed and kind not in (TileKind.TENSOR, TileKind.BLOCKS):
        raise ValueError(
          f"a transposed operand {side} needs per-tensor or S x S block "
          f"scales, got {kind}"
        )
    if (self.a_packed or self.b_packed) and self.chunk % 2:
      raise ValueError(f"packed operands need an even chunk, got {self.chunk}")

  @property
  def per_chunk(self) -> bool:
    """True when the scales change along K (rescale every chunk)."""
    return self.a_scales in _PER_CHUNK or self.b_scales in _PER_CHUNK

  @property
  def integer_accumulator(self) -> bool:
    """True when the whole K loop may sum in int32 (exact): integer codes
    whose scales are constant along K."""
    return self.accumulator == np.dtype(np.int32) and not self.per_chunk

  @property
  def chunks(self) -> int:
    return cdiv(self.bmnk[3], self.chunk)

  @property
  def grid(self) -> tuple[int, int, int]:
    b, m, n, _ = self.bmnk
    return b, cdiv(m, self.block_m), cdiv(n, self.block_n)


def _operand_spec(
  rows: int, k_extent: int, axis: int, packed: bool, transposed: bool
) -> pl.BlockSpec:
  """The whole K extent of this program's ``rows`` (``axis``: 1 for a's
  rows, 2 for b's), stored K-major or contraction-major, packed or not."""
  out_index = (lambda i, j: i) if axis == 1 else (lambda i, j: j)
  width = rows // 2 if packed and transposed else rows
  if transposed:
    return pl.BlockSpec(
      (None, k_extent, width), lambda b, i, j: (b, 0, out_index(i, j))
    )
  extent = k_extent // 2 if packed else k_extent
  return pl.BlockSpec(
    (None, rows, extent), lambda b, i, j: (b, out_index(i, j), 0)
  )


def _scale_spec(kind, rows, chunk, n_cols, axis, transposed: bool):
  if kind is TileKind.TENSOR:
    return pl.BlockSpec((None, 1, 1), lambda b, i, j: (0, 0, 0))
  block_rows = rows // chunk if kind is TileKind.BLOCKS else rows
  cols = 1 if kind is TileKind.ROWS else n_cols
  if transposed:  # (B, K blocks, row blocks)
    return _operand_spec(block_rows, cols, axis, False, True)
  return _operand_spec(block_rows, cols, axis, False, False)


def in_specs(plan: MatmulPlan) -> list[pl.BlockSpec]:
  """BlockSpecs of (a, a_scales, b, b_scales)."""
  k_extent = plan.chunks * plan.chunk
  n_cols = plan.chunks
  return [
    _operand_spec(plan.block_m, k_extent, 1, plan.a_packed, plan.a_transposed),
    _scale_spec(
      plan.a_scales, plan.block_m, plan.chunk, n_cols, 1, plan.a_transposed
    ),
    _operand_spec(plan.block_n, k_extent, 2, plan.b_packed, plan.b_transposed),
    _scale_spec(
      plan.b_scales, plan.block_n, plan.chunk, n_cols, 2, plan.b_transposed
    ),
  ]


def _row_scales(ref, kind, c, program, rows, total, group, transposed):
  """This program's scales for K chunk ``c``: (rows, 1), or (1, 1) per-tensor.

  Per-row scales ignore ``c``; S x S block scales are repeated S times.
  """
  if kind is TileKind.TENSOR:
    return ref[...]
  if kind is TileKind.BLOCKS:
    count = rows // group
    if transposed:
      index = program * count + lax.broadcasted_iota(jnp.int32, (1, count), 1)
      values = L.load(ref.at[pl.ds(c, 1), :], index < cdiv(total, group))
      values = values.reshape(count, 1)
    else:
      index = program * count + lax.broadcasted_iota(jnp.int32, (count, 1), 0)
      values = L.load(ref.at[:, pl.ds(c, 1)], index < cdiv(total, group))
    return L.expand_rows(values, group)
  index = program * rows + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
  sliced = ref if kind is TileKind.ROWS else ref.at[:, pl.ds(c, 1)]
  return L.load(sliced, index < total)


def _load_chunk(ref, c, program, rows, total, k, chunk, packed, transposed):
  """Chunk ``c`` of this program's operand as int8/FP8 codes: (rows, chunk),
  or (chunk, rows) when the operand is stored contraction-major."""
  k0 = c * chunk
  width = rows // 2 if packed else rows
  extent = total // 2 if packed else total
  if transposed:
    along = program * width + lax.broadcasted_iota(jnp.int32, (1, width), 1)
    k_ok = k0 + lax.broadcasted_iota(jnp.int32, (chunk, 1), 0) < k
    v = L.load(ref.at[pl.ds(k0, chunk), :], k_ok & (along < extent))
  else:
    row = program * rows + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    span = chunk // 2 if packed else chunk
    start = k0 // 2 if packed else k0
    limit = k // 2 if packed else k
    k_ok = start + lax.broadcasted_iota(jnp.int32, (1, span), 1) < limit
    v = L.load(ref.at[:, pl.ds(start, span)], (row < total) & k_ok)
  return unpack_pairs(v) if packed else v


def kernel(a_ref, as_ref, b_ref, bs_ref, *refs, plan: MatmulPlan):
  """One output tile: the K loop, then the epilogue."""
  refs = list(refs)
  seed_ref = refs.pop(0) if plan.stochastic else None
  _, m, n, k = plan.bmnk
  i, j = pl.program_id(1), pl.program_id(2)
  bm, bn, chunk = plan.block_m, plan.block_n, plan.chunk
  rows = i * bm + lax.broadcasted_iota(jnp.int32, (bm, 1), 0)
  cols = j * bn + lax.broadcasted_iota(jnp.int32, (1, bn), 1)
  contract = (
    ((0 if plan.a_transposed else 1,), (0 if plan.b_transposed else 1,)),
    ((), ()),
  )

  def a_scales(c):
    return _row_scales(
      as_ref, plan.a_scales, c, i, bm, m, chunk, plan.a_transposed
    )

  def b_scales(c):
    return _row_scales(
      bs_ref, plan.b_scales, c, j, bn, n, chunk, plan.b_transposed
    ).reshape(1, -1)

  def step(c, acc):
    a = _load_chunk(
      a_ref, c, i, bm, m, k, chunk, plan.a_packed, plan.a_transposed
    )
    b = _load_chunk(
      b_ref, c, j, bn, n, k, chunk, plan.b_packed, plan.b_transposed
    )
    if plan.upcast is not None:
      a, b = a.astype(plan.upcast), b.astype(plan.upcast)
    p = lax.dot_general(a, b, contract, preferred_element_type=plan.accumulator)
    if plan.integer_accumulator:
      return acc + p
    p = p.astype(jnp.float32)
    if plan.per_chunk:
      p = p * (a_scales(c) * b_scales(c))
    return acc + p

  acc_dtype = jnp.int32 if plan.integer_accumulator else jnp.float32
  acc = lax.fori_loop(0, plan.chunks, step, jnp.zeros((bm, bn), acc_dtype))
  if not plan.per_chunk:
    acc = acc.astype(jnp.float32) * (a_scales(0) * b_scales(0))
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
  L.store_block_scales(s_ref, scale, ob, plan.bmnk[:3])


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
