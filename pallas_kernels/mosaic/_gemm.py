"""The Hopper kernel behind every scaled 8-bit GEMM: TMA, wgmma, promotion.

For K-major operands ``a`` (B, M, K) and ``b`` (B, N, K) of int8, INT4
(``jnp.int4``, two codes per byte) or fp8 codes, and fp32 scales given per
row and per K chunk, ``sa`` (B, C, M) and ``sb`` (B, C, N):

    P_j[b, m, n] = sum_{k in chunk j} a[b, m, k] * b[b, n, k]
    out[b, m, n] = sum_j P_j[b, m, n] * (sa[b, j, m] * sb[b, j, n])

``P_j`` comes from ``wgmma`` into a fresh int32 (int8) or fp32 (fp8)
accumulator, exact for int8; the rescale and the sum over chunks run in fp32,
in exactly this order, which is the order of the ``"xla"`` implementation.
With ``chunk=None`` there is one chunk spanning K (C = 1): one accumulator
over all of K and the scales applied once in the epilogue (per-tensor and
per-row scales).

Structure (as jax's ``hopper_matmul_mgpu``): a persistent grid of one CTA per
SM walks the output tiles; in each CTA a memory warpgroup streams
``tile_k``-wide slices of both operands (and the scale rows) through a
``max_concurrent_steps``-deep TMA pipeline, and two compute warpgroups each
run ``wgmma`` on their half of the CTA tile. While one compute warpgroup
promotes its partial sum, the other can use the tensor cores. Promotion is
an int32 -> fp32 conversion (exact, by the magic-number form: one integer
add, one float subtract) and ``carry + P * s`` with ``s = sa * sb``. Where a
warpgroup's tile lies inside one scale block of an operand (INT8 128-blocks
with 64-row warpgroup tiles and 128-wide N tiles), that operand's scale is
one SMEM scalar per chunk, so for INT8 128-blocks ``s`` is one scalar and
the promotion costs one multiply and one add per element instead of two
multiplies and an add.

**Ceiling of the promotion** (a derivation, not a measurement): an H200 SM
issues 128 fp32 and 64 int32 operations per clock against ~4096 INT8 MACs
per clock of dense ``wgmma``. Promoting every element of the tile once per
K chunk of width c costs 2 fp32 operations and 1 int32 add (scalar scales)
or 3 fp32 operations and 1 int32 add (row and column scales), so the
promotion alone allows at most 64 (resp. ~43) elements per clock, i.e.
64 c (43 c) MACs per clock. For c = 128 that is 8192 (5461) MACs/clock:
above the tensor-core rate, so the 128-block GEMM can be MMA bound if
promotion overlaps the other warpgroup's ``wgmma``. For Jetfire's c = 32
it is 2048 (1365) MACs/clock: at most 50% (33%) of the INT8 peak, i.e. at
most 1.0x (0.67x) the dense bf16 peak, however the waits are arranged.
The faithful 32-block INT8 GEMM cannot beat bf16 on Hopper; its blocks
serve accuracy experiments, and the 128-block variant is the fast one. The epilogue
converts the fp32 tile to the output dtype in SMEM slots and stores it with
TMA, overlapped with the next tile; or, for the INT8-out variant,
requantizes it in S x S blocks (``_epilogue.requantize_tile``; that variant
lowers with Lane semantics).

**INT4 operands** (Hopper has no 4-bit ``wgmma``): the TMA pipeline streams
the packed tiles (half the bytes of int8, with a ``tile_k / 2``-byte
swizzle); each compute warpgroup loads its rows of a packed tile into
registers, sign-extends the nibbles to int8 (``astype``: Mosaic's
shift/permute sequence) and stores them into its own int8 SMEM slot, which
``wgmma`` then reads like any int8 operand. Codes are exact, so the sums are
the int8 GEMM's bit for bit. Cost (a prediction): per warpgroup and
128-wide K step of a 64 x 128 tile, a packed B tile is 8 KiB read and
16 KiB written to SMEM on top of the 24 KiB ``wgmma`` reads, i.e. about
twice the SMEM traffic of the int8 kernel; with both warpgroups unpacking
the shared B tile (``wg_dimension="m"``) that is ~96 KiB per CTA step
(~750 cycles at 128 B/cycle) against ~512 cycles of INT8 tensor work, so
SMEM bandwidth, not the tensor cores, bounds it (~0.7x the INT8 peak).
Unpacking A into registers instead (``wgmma`` with a register operand) and
splitting B's unpacking between the two warpgroups would remove most of
it; the Mosaic GPU interpreter runs only SMEM operands, so this first
version keeps every ``wgmma`` operand in SMEM and stays testable on CPU.

Out-of-range reads (ragged M, N, K tails inside the arrays' TMA-aligned
shape) are zero-filled by TMA, so they add nothing to any sum; out-of-range
rows and columns of the output are clipped by the TMA store.
"""

import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import cdiv
from pallas_kernels.matmul_reference import promotion_chunk
from pallas_kernels.mosaic import _hw, _operands
from pallas_kernels.mosaic import quantize as Q
from pallas_kernels.mosaic._config import (
  UNPACK_ROWS,
  TuningConfig,
  check_config,
  default_config,
)
from pallas_kernels.mosaic._epilogue import requantize_tile, store_tile

_ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per accumulator row
_COL = plgpu.Layout.WGMMA.reduce(0)  # one value per accumulator column
# Registers of an INT4 tile being unpacked: 8 codes (32 bits) per vector,
# the layout Mosaic upcasts 4-bit values in (fewest spills in ptxas of the
# WGMMA-family layouts: benchmarks/ptxas.py).
_UNPACK = plgpu.Layout.WGMMA_UPCAST_4X
MEMORY_REGISTERS = 40


def _transforms(swizzle: int, itemsize: float):
  """Tiles of 8 rows by one ``swizzle``-byte row (``itemsize`` 1/2: INT4)."""
  return (
    plgpu.TilingTransform((8, int(swizzle / itemsize))),
    plgpu.SwizzleTransform(swizzle),
  )


def out_swizzle(epi_tile_n: int, itemsize: int) -> int:
  """Swizzle of an epilogue tile (the TMA store needs N a multiple of it)."""
  return plgpu.find_swizzle(epi_tile_n * itemsize * 8, "epilogue tile")


def scaled_matmul(
  a_q,
  a_s,
  a_tile,
  b_q,
  b_s,
  b_tile,
  *,
  out_dtype,
  interpret,
  config,
  name,
  requantize: Q.BandPlan | None = None,
  seed=None,
):
  """(B, M, N) from raw codes and ``QTensor``-shaped scales of any tiles.

  Pads the codes to TMA-aligned shapes (no copy when aligned), expands the
  scales to rows per K chunk, picks the swizzle and (unless given) the
  config, runs :func:`scaled_gemm` and drops the padding. With
  ``requantize`` (a fused S x S INT8 plan over the (B, M, N) output) the
  epilogue writes INT8 codes and block scales instead: returns ``(q, s)``.
  """
  batch, m, k = a_q.shape
  n = b_q.shape[1]
  chunk = promotion_chunk(a_tile, b_tile, k)
  packed = (a_q.dtype == jnp.int4, b_q.dtype == jnp.int4)
  config = config or default_config(
    promoted=chunk is not None,
    n_sub=_operands.sub_chunks(chunk),
    out_itemsize=jnp.dtype(out_dtype).itemsize,
    requantize=requantize is not None,
    packed=packed,
  )
  k_align = _operands.K_ALIGN
  if any(packed):
    k_align = 2 * _operands.packed_swizzle(config.tile_k)
  a, b = _operands.pad_codes(a_q, k_align), _operands.pad_codes(b_q, k_align)
  rows = functools.partial(_operands.scale_rows, batch=batch, k=k, chunk=chunk)
  uniform = (_uniform_rows(a_tile), _uniform_rows(b_tile))
  a, b, sa, sb = _operands.pad_k_steps(
    a,
    b,
    rows(a_s, a_tile, rows=m, padded_rows=_operands.round_up(m, config.cta_m)),
    rows(b_s, b_tile, rows=n, padded_rows=_operands.round_up(n, config.cta_n)),
    tile_k=config.tile_k,
    n_sub=_operands.sub_chunks(chunk, config.tile_k),
    promoted=chunk is not None,
  )
  out = scaled_gemm(
    a,
    b,
    sa,
    sb,
    chunk=chunk,
    swizzle=_operands.choose_swizzle(a.shape[2], chunk),
    out_dtype=out_dtype,
    config=config,
    interpret=interpret,
    name=name,
    requantize=requantize,
    seed=seed,
    uniform_rows=uniform,
  )
  if requantize is None:
    return out[:, :m, :n]
  q, s = out
  ob = requantize.block
  return q[:, :m, :n], s[:, : cdiv(m, ob), : cdiv(n, ob)]


def _uniform_rows(tile) -> int:
  """Rows that share one scale per chunk, aligned: S for (S, S) blocks, 1
  otherwise (the promoted tiles are (S, S), (1, G))."""
  if tile is not None and tile[0] == tile[1]:
    return tile[0]
  return 1


def scaled_gemm(
  a: jax.Array,
  b: jax.Array,
  sa: jax.Array,
  sb: jax.Array,
  *,
  chunk: int | None,
  swizzle: int,
  out_dtype,
  config: TuningConfig,
  interpret,
  name: str,
  requantize: Q.BandPlan | None = None,
  seed=None,
  uniform_rows: tuple[int, int] = (1, 1),
):
  """Runs the kernel on TMA-aligned operands (see ``_operands``).

  Args:
    a, b: (B, M, K) and (B, N, K) int8 / fp8 codes, or int4 (either, with
      int8); M, N multiples of 8, K a multiple of ``swizzle`` (and, with an
      int4 operand, of ``2 * packed_swizzle(tile_k)``).
    sa, sb: (B, C, Ms) and (B, C, Ns) fp32 scales, Ms and Ns covering whole
      CTA tiles; C = cdiv(K, chunk) (1 when ``chunk`` is None).
    chunk: K elements per promotion (divides ``config.tile_k``), or None.
    swizzle: bytes; ``chunk`` (when promoting) is a multiple of it.
    out_dtype: float32 or bfloat16 (or float16).
    config: tiles; checked against the hardware rules first.
    interpret: see ``_hw.interpret_params``.
    name: the kernel's name in profiles.
    requantize, seed: the INT8-out epilogue (see :func:`scaled_matmul`);
      ``seed`` a (1,) uint32 array for stochastic rounding.
    uniform_rows: for a and b, how many aligned rows share one scale per
      chunk (a warpgroup tile inside one such group reads a scalar scale).

  Returns:
    (B, M, No) in ``out_dtype``, No = N rounded up to the epilogue swizzle;
    with ``requantize``, int8 codes (B, M, N rounded up to 16) and the
    block scales of whole CTA tiles.
  """
  batch, m, k = a.shape
  n = b.shape[1]
  promoted = chunk is not None
  n_sub = config.tile_k // chunk if promoted else 1
  out_itemsize = jnp.dtype(out_dtype).itemsize
  packed = (a.dtype == jnp.int4, b.dtype == jnp.int4)
  if any(packed) and requantize is not None:
    raise NotImplementedError(
      "the Hopper GEMM's INT8-out epilogue takes int8 operands, not INT4"
    )
  check_config(
    config,
    swizzle=swizzle,
    chunk=chunk,
    out_itemsize=out_itemsize,
    requantize=requantize is not None,
    packed=packed,
  )
  params = _hw.interpret_params(interpret)
  o_swizzle = out_swizzle(config.epi_tile_n, out_itemsize)
  n_out = -(-n // (o_swizzle // out_itemsize)) * (o_swizzle // out_itemsize)
  body = functools.partial(
    _kernel,
    config=config,
    chunk=chunk,
    n_sub=n_sub,
    swizzle=swizzle,
    acc_dtype=jnp.int32 if a.dtype in (jnp.int8, jnp.int4) else jnp.float32,
    out_dtype=jnp.dtype(out_dtype),
    tiles=_cluster_tiles(config, batch, m, n),
    requantize=requantize,
    uniform=_uniform_scales(config, *uniform_rows),
    packed=packed,
  )
  c = config
  out_type = jax.ShapeDtypeStruct((batch, m, n_out), out_dtype)
  scratch = dict(
    o_smem=plgpu.SMEM(
      (2, 2, c.wg_tile_m, c.epi_tile_n),
      out_dtype,
      transforms=_transforms(o_swizzle, out_itemsize),
    )
  )
  # Each compute warpgroup's int8 slots for the tiles it unpacks.
  for slot, rows, is_packed in (
    ("au_smem", c.wg_tile_m, packed[0]),
    ("bu_smem", c.tile_n, packed[1]),
  ):
    if is_packed:
      scratch[slot] = plgpu.SMEM(
        (2, rows, c.tile_k), jnp.int8, transforms=_transforms(swizzle, 1)
      )
  semantics = _hw.compiler_params()
  args = [a, b, sa, sb]
  if requantize is not None:
    ob, tiles = requantize.block, body.keywords["tiles"]
    scale_grid = (batch, tiles[1] * c.cta_m // ob, tiles[2] * c.cta_n // ob)
    out_type = (
      jax.ShapeDtypeStruct((batch, m, -(-n // 16) * 16), jnp.int8),
      jax.ShapeDtypeStruct(scale_grid, jnp.float32),
    )
    # The fp32 tile is staged in SMEM and re-read in S x S blocks.
    scratch = dict(
      f_smem=plgpu.SMEM((2, c.wg_tile_m, c.tile_n), jnp.float32),
      q_smem=plgpu.SMEM((2, c.wg_tile_m, c.tile_n), jnp.int8),
      m_smem=plgpu.SMEM((2, c.tile_n // ob, c.wg_tile_m), jnp.float32),
    )
    # Lane semantics: the scale's exact reciprocal bitcasts scalars, which
    # Warpgroup semantics cannot lower (see _hw.lane_params).
    semantics = _hw.lane_params()
    if requantize.stochastic:
      args.append(seed)
  kernel = plgpu.kernel(
    body,
    out_type=out_type,
    scratch_types=scratch,
    grid=(_hw.num_sms(params is not None, c.num_sms) // c.cluster_size,),
    grid_names=("sm",),
    **(
      {}
      if c.cluster is None
      else dict(cluster=(c.cluster_size,), cluster_names=("cluster",))
    ),
    num_threads=3,
    thread_name="wg",
    compiler_params=semantics,
    interpret=params,
    kernel_name=name,
  )
  return kernel(*args)


def _cluster_tiles(c: TuningConfig, batch: int, m: int, n: int):
  """(B, M tiles, N tiles) of CTA tiles, checking that a clustered
  dimension has whole pairs of tiles."""
  tiles = (batch, cdiv(m, c.cta_m), cdiv(n, c.cta_n))
  along = {"m": 1, "n": 2}.get(c.cluster)
  if along is not None and tiles[along] % c.cluster_size:
    raise ValueError(
      f"TuningConfig cluster={c.cluster!r} pairs CTA tiles along "
      f"{c.cluster.upper()}, but M={m}, N={n} make {tiles[1]} x {tiles[2]} "
      f"tiles of {c.cta_m} x {c.cta_n}: an odd number along "
      f"{c.cluster.upper()}; use cluster=None for this shape"
    )
  return tiles


def _uniform_scales(c: TuningConfig, a_rows: int, b_rows: int):
  """(a, b): whether each warpgroup tile's rows of a (columns of b) lie in
  one group of rows sharing a scale (tiles start at multiples of their
  size, so divisibility is enough)."""
  wg_rows = c.wg_tile_m if c.wg_dimension == "m" else c.cta_m
  return a_rows % wg_rows == 0, b_rows % c.tile_n == 0


def _kernel(
  a_g,
  b_g,
  sa_g,
  sb_g,
  *refs,
  config: TuningConfig,
  chunk,
  n_sub,
  swizzle,
  acc_dtype,
  out_dtype,
  tiles,
  requantize,
  uniform,
  packed,
  o_smem=None,
  f_smem=None,
  q_smem=None,
  m_smem=None,
  au_smem=None,
  bu_smem=None,
):
  refs = list(refs)
  seed_g = refs.pop(0) if requantize and requantize.stochastic else None
  o_g = refs.pop(0)
  s_g = refs.pop(0) if requantize else None
  c = config
  batch, m_tiles, n_tiles = tiles
  k_steps = cdiv(a_g.shape[2], c.tile_k)
  promoted = chunk is not None
  # Without promotion one wgmma group stays in flight across K steps
  # (``wgmma_wait(1)``), so each operand slot is released one step late;
  # not with INT4 operands, whose unpacked slot the next step rewrites.
  delay = 0 if promoted or c.max_concurrent_steps < 2 or any(packed) else 1
  # In a 2-CTA cluster the operand (and its scales) that both CTAs read is
  # loaded once and multicast: B along M, A along N.
  shared = {
    "a": ("cluster",) if c.cluster == "n" else (),
    "b": ("cluster",) if c.cluster == "m" else (),
  }
  in_specs = [
    plgpu.BlockSpec(
      (rows, c.tile_k),
      lambda k: (0, k),
      transforms=(
        _transforms(_operands.packed_swizzle(c.tile_k), 1 / 2)
        if is_packed
        else _transforms(swizzle, 1)
      ),
      delay_release=delay,
      collective_axes=shared[side],
    )
    for side, rows, is_packed in (
      ("a", c.cta_m, packed[0]),
      ("b", c.cta_n, packed[1]),
    )
  ]
  if promoted:
    in_specs += [
      plgpu.BlockSpec(
        (n_sub, rows), lambda k: (k, 0), collective_axes=shared[side]
      )
      for side, rows in (("a", c.cta_m), ("b", c.cta_n))
    ]

  def pipeline(step, context):
    return plgpu.emit_pipeline_warp_specialized(
      step,
      grid=(k_steps,),
      memory_registers=MEMORY_REGISTERS,
      in_specs=in_specs,
      wg_axis="wg",
      num_compute_wgs=2,
      max_concurrent_steps=c.max_concurrent_steps,
      compute_context=context,
    )

  def cta_refs(bi, cm, cn):
    refs = [a_g.at[bi, cm, :], b_g.at[bi, cn, :]]
    if promoted:
      refs += [sa_g.at[bi, :, cm], sb_g.at[bi, :, cn]]
    return refs

  def ignore(*args, **kwargs):
    del args, kwargs

  first = cta_refs(0, pl.ds(0, c.cta_m), pl.ds(0, c.cta_n))
  allocations = pipeline(ignore, ignore).get_allocations(*first)

  def scope(allocs):
    wg = lax.axis_index("wg")
    wm = (
      pl.ds(wg * c.wg_tile_m, c.wg_tile_m)
      if c.wg_dimension == "m"
      else (slice(None))
    )
    wn = (
      pl.ds(wg * c.tile_n, c.tile_n) if c.wg_dimension == "n" else (slice(None))
    )
    # The first row (column) of this warpgroup's tile within the CTA tile.
    wm0 = wg * c.wg_tile_m if c.wg_dimension == "m" else 0
    wn0 = wg * c.tile_n if c.wg_dimension == "n" else 0

    # The persistent loop walks cluster tiles (pairs of CTA tiles along
    # the clustered dimension; single CTA tiles without a cluster).
    mc = m_tiles // (c.cluster_size if c.cluster == "m" else 1)
    nc = n_tiles // (c.cluster_size if c.cluster == "n" else 1)

    @plgpu.nd_loop((batch * mc * nc,), collective_axes="sm")
    def _tile(info):
      (linear,) = info.index
      bi = linear // (mc * nc)
      mi, ni = plgpu.planar_snake(
        linear % (mc * nc), (mc, nc), 1, c.grid_tile_width
      )
      if c.cluster is not None:
        cta = lax.axis_index("cluster")
        if c.cluster == "m":
          mi = mi * c.cluster_size + cta
        else:
          ni = ni * c.cluster_size + cta
      cm = pl.ds(mi * c.cta_m, c.cta_m)
      cn = pl.ds(ni * c.cta_n, c.cta_n)
      wg_out = o_g.at[bi].at[cm, cn].at[wm, wn]

      def operands(a_s, b_s):
        """This warpgroup's int8 tiles of the step: its rows of the
        pipeline's slots, or of its unpacked copies of INT4 slots."""
        a_w, b_w = a_s.at[wm], b_s.at[wn]
        if packed[0]:
          a_w = _unpack(a_w, au_smem.at[wg])
        if packed[1]:
          b_w = _unpack(b_w, bu_smem.at[wg])
        if any(packed):
          plgpu.commit_smem()  # the stores, before wgmma's async reads
        return a_w, b_w

      def promote_step(_, a_s, b_s, sa_s, sb_s, carry):
        a_w, b_w = operands(a_s, b_s)
        for j in range(n_sub):
          ks = pl.ds(j * chunk, chunk)

          def mma(acc, ks=ks):
            plgpu.wgmma(acc, a_w.at[:, ks], b_w.at[:, ks].T)
            return acc[...]

          p = pl.run_scoped(mma, plgpu.ACC((c.wg_tile_m, c.tile_n), acc_dtype))
          shape = (c.wg_tile_m, c.tile_n)
          s = _scale_product(
            _chunk_scale(sa_s.at[j], wm, wm0, uniform[0], _ROW),
            _chunk_scale(sb_s.at[j], wn, wn0, uniform[1], _COL),
            shape,
          )
          carry = carry + _partial_to_f32(p, chunk) * s
        return carry

      def promote_context(run):
        zeros = jnp.zeros((c.wg_tile_m, c.tile_n), jnp.float32)
        out = run(plgpu.layout_cast(zeros, plgpu.Layout.WGMMA))
        if requantize is None:
          store_tile(out, wg_out, o_smem.at[wg], c, out_dtype)
          return
        by_m, by_n = c.wg_dimension == "m", c.wg_dimension == "n"
        origin = (
          mi * c.cta_m + (wg * c.wg_tile_m if by_m else 0),
          ni * c.cta_n + (wg * c.tile_n if by_n else 0),
        )
        seed = None if seed_g is None else seed_g[0]
        slots = (f_smem.at[wg], q_smem.at[wg], m_smem.at[wg])
        requantize_tile(out, slots, wg_out, s_g, seed, bi, origin, requantize)

      def accumulate_step(_, a_s, b_s, acc):
        a_w, b_w = operands(a_s, b_s)
        plgpu.wgmma(acc, a_w, b_w.T)
        plgpu.wgmma_wait(delay)  # reading acc[...] afterwards waits for all
        return acc

      def accumulate_context(run):
        def with_acc(acc):
          run(acc)
          return acc[...]

        acc_type = plgpu.ACC((c.wg_tile_m, c.tile_n), acc_dtype)
        p = pl.run_scoped(with_acc, acc_type).astype(jnp.float32)
        s_a = plgpu.load(
          sa_g.at[bi, 0, cm].at[wm], layout=_ROW, optimized=False
        )
        s_b = plgpu.load(
          sb_g.at[bi, 0, cn].at[wn], layout=_COL, optimized=False
        )
        shape = (c.wg_tile_m, c.tile_n)
        out = p * (_spread(s_a, shape, 0) * _spread(s_b, shape, 1))
        store_tile(out, wg_out, o_smem.at[wg], c, out_dtype)

      if promoted:
        step, context = promote_step, promote_context
      else:
        step, context = accumulate_step, accumulate_context
      pipeline(step, context)(*cta_refs(bi, cm, cn), allocations=allocs)

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  pl.run_scoped(scope, allocations, collective_axes="wg")


def _unpack(packed_ref, int8_ref):
  """Sign-extends an INT4 SMEM tile into an int8 SMEM tile of the same
  shape, ``UNPACK_ROWS`` rows at a time; returns ``int8_ref``."""
  rows = packed_ref.shape[0]
  for r in range(0, rows, UNPACK_ROWS):
    band = pl.ds(r, min(UNPACK_ROWS, rows - r))
    int8_ref[band] = plgpu.load(packed_ref.at[band], layout=_UNPACK).astype(
      jnp.int8
    )
  return int8_ref


# The bits of 1.5 * 2^23: for |p| < 2^22 the float with bits MAGIC + p is
# exactly 1.5 * 2^23 + p (p lands in the 23-bit significand field).
_MAGIC_BITS = 0x4B400000
_MAGIC = 1.5 * 2**23


def _partial_to_f32(p, chunk: int):
  """``float32(p)`` of a chunk's partial sum, exactly.

  INT8 (and INT4) partials have |p| <= chunk * 128^2 < 2^22 for chunk <= 128, so the
  magic-number form (one integer add, a free bitcast, one float subtract)
  gives the same bits as ``sitofp``, without ``cvt.rn.f32.s32`` (a
  conversion-unit instruction, far below FMA throughput on sm_90). FP8
  partials are already f32.
  """
  if p.dtype != jnp.int32:
    return p
  assert chunk * 128 * 128 < 2**22, chunk
  bits = p + jnp.int32(_MAGIC_BITS)
  return lax.bitcast_convert_type(bits, jnp.float32) - jnp.float32(_MAGIC)


def _chunk_scale(row_ref, window, first, uniform: bool, layout):
  """One chunk's scales of this warpgroup's rows (a, ``_ROW``) or columns
  (b, ``_COL``): an SMEM scalar when they are all one value, else a vector."""
  if uniform:
    return row_ref[first]
  return plgpu.load(row_ref.at[window], layout=layout)


def _scale_product(s_a, s_b, shape):
  """``sa[m] * sb[n]`` over a WGMMA-layout tile: a scalar when both are
  scalars, one multiply per row or column when one is, else per element."""
  a_vec, b_vec = getattr(s_a, "ndim", 0) > 0, getattr(s_b, "ndim", 0) > 0
  if not a_vec and not b_vec:
    return s_a * s_b
  if not b_vec:
    return _spread(s_a * s_b, shape, 0)
  if not a_vec:
    return _spread(s_a * s_b, shape, 1)
  return _spread(s_a, shape, 0) * _spread(s_b, shape, 1)


def _spread(v, shape, dim):
  """A row (dim 0) or column (dim 1) vector over a WGMMA-layout tile."""
  spread = lax.broadcast_in_dim(v, shape, (dim,))
  return plgpu.layout_cast(spread, plgpu.Layout.WGMMA)
