"""Tile configuration of the Hopper GEMM kernels and the rules it must obey.

A CTA runs three warpgroups: one issues TMA copies (the memory warpgroup) and
two compute. Each compute warpgroup owns a ``wg_tile_m x tile_n`` output tile;
the two are stacked along M (``wg_dimension="m"``) or N (``"n"``), so a CTA
covers ``cta_m x cta_n``. The K loop is a ``max_concurrent_steps``-deep TMA
pipeline of ``tile_k``-wide steps. The grid is persistent: one CTA per SM
walks the output tiles in a snake order (``grid_tile_width`` tiles wide) so
that neighbouring CTAs share operand tiles in L2.

Hardware rules checked here, before lowering, with our own messages:

* ``wgmma``: M per warpgroup a multiple of 64; N a multiple of 8 and at most
  256; 8-bit operands K-major with K a multiple of the swizzle;
* registers: a warpgroup holds its accumulator (and, when partial sums are
  promoted, an fp32 carry of the same size) in registers; more than
  ``MAX_ACC_REGISTERS`` 32-bit registers per thread would spill;
* shared memory: pipeline buffers plus the epilogue tiles must fit in the
  227 KiB a Hopper CTA can use.
"""

import dataclasses
from typing import Literal

SMEM_BYTES = 232448  # Hopper: 227 KiB of dynamic shared memory per CTA
# Barriers, alignment padding and the pipeline's bookkeeping.
SMEM_RESERVE = 2048
THREADS_PER_WARPGROUP = 128
# A compute warpgroup gets ~232 registers per thread next to a 40-register
# memory warpgroup; keep ~40 for addresses, scales and the epilogue.
MAX_ACC_REGISTERS = 192
SWIZZLES = (128, 64, 32)  # bytes; 8-bit wgmma needs one of these
MAX_STAGES = 6
# Rows of an INT4 tile unpacked at a time (``_gemm``): 64 x 128 codes are 16
# registers per thread as int8, beside an accumulator of up to 128.
UNPACK_ROWS = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuningConfig:
  """Tiles of one Hopper GEMM launch (see the module docstring).

  Args:
    wg_tile_m: rows per compute warpgroup (64 or 128).
    tile_n: columns per compute warpgroup (multiple of 8, at most 256).
    tile_k: K per pipeline step (multiple of 32; 128 fills a 128-byte
      swizzled row of 8-bit codes).
    max_concurrent_steps: pipeline depth (TMA stages in flight).
    wg_dimension: how the two compute warpgroups split the CTA tile.
    epi_tile_n: columns per epilogue store (SMEM slot, TMA store).
    grid_tile_width: width of the snake order over output tiles.
    num_sms: CTAs of the persistent grid (None: the device's SM count).
    cluster: None, or pair CTAs in 2-CTA clusters along "m" (the pair
      computes two M-neighbouring tiles and shares their B tile: one TMA
      load multicast to both SMs, halving B's L2 reads) or "n" (shares A).
      The output tiles along that dimension must come in pairs.
  """

  wg_tile_m: int = 64
  tile_n: int = 128
  tile_k: int = 128
  max_concurrent_steps: int = 4
  wg_dimension: Literal["m", "n"] = "m"
  epi_tile_n: int = 64
  grid_tile_width: int = 8
  num_sms: int | None = None
  cluster: Literal["m", "n"] | None = None

  @property
  def cluster_size(self) -> int:
    return 1 if self.cluster is None else 2

  @property
  def cta_m(self) -> int:
    return self.wg_tile_m * (2 if self.wg_dimension == "m" else 1)

  @property
  def cta_n(self) -> int:
    return self.tile_n * (2 if self.wg_dimension == "n" else 1)


def default_config(
  *,
  promoted: bool,
  n_sub: int,
  out_itemsize: int,
  requantize: bool = False,
  packed: tuple[bool, bool] = (False, False),
) -> TuningConfig:
  """The heuristic default for a GEMM: tiles first, then the deepest pipeline.

  Without promotion (per-tensor or per-row scales) one fp32 accumulator per
  warpgroup spans all of K, so a 64 x 256 warpgroup tile (128 registers per
  thread) fits and a 128 x 256 CTA tile halves the operand traffic per FLOP
  against 128 x 128. With promotion every K block (block scales) the int32
  or fp32 partial sum and the fp32 carry both live in registers, so the
  warpgroup tile is 64 x 128 (2 x 64 registers) and the CTA tile 128 x 128.
  The pipeline then gets as many stages (up to ``MAX_STAGES``) as shared
  memory holds: deeper pipelines hide more of the L2/HBM latency.
  ``packed`` (a, b): operands stored as INT4 (see :func:`smem_bytes`).
  """
  tiles = TuningConfig(
    wg_tile_m=64, tile_n=128 if promoted or any(packed) else 256
  )
  return deepest_pipeline(
    tiles,
    n_sub=n_sub,
    promoted=promoted,
    out_itemsize=out_itemsize,
    requantize=requantize,
    packed=packed,
  )


def deepest_pipeline(
  tiles: TuningConfig,
  *,
  n_sub: int,
  promoted: bool,
  out_itemsize: int,
  requantize: bool = False,
  packed: tuple[bool, bool] = (False, False),
) -> TuningConfig:
  """``tiles`` with the most stages (up to ``MAX_STAGES``) that fit SMEM."""
  for stages in range(MAX_STAGES, 1, -1):
    config = dataclasses.replace(tiles, max_concurrent_steps=stages)
    need = smem_bytes(
      config,
      n_sub=n_sub,
      promoted=promoted,
      out_itemsize=out_itemsize,
      requantize=requantize,
      packed=packed,
    )
    if need <= SMEM_BYTES:
      return config
  raise ValueError(f"not even two pipeline stages of {tiles} fit in SMEM")


def smem_bytes(
  config: TuningConfig,
  *,
  n_sub: int,
  promoted: bool,
  out_itemsize: int,
  requantize: bool = False,
  packed: tuple[bool, bool] = (False, False),
) -> int:
  """Shared memory of one CTA: pipeline stages plus epilogue slots (with
  ``requantize``, each compute warpgroup's fp32 tile and its int8 codes).

  An operand stored as INT4 (``packed`` for a, b) streams half the bytes per
  stage, and each compute warpgroup unpacks its tile of it into an int8
  ``tile_k``-wide slot that ``wgmma`` reads (``_gemm``).
  """
  c = config
  a_bytes, b_bytes = (1 / 2 if p else 1 for p in packed)
  stage = int((c.cta_m * a_bytes + c.cta_n * b_bytes) * c.tile_k)
  unpacked = 2 * c.tile_k * (c.wg_tile_m * packed[0] + c.tile_n * packed[1])
  if promoted:
    stage += 4 * n_sub * (c.cta_m + c.cta_n)  # fp32 scale rows
  epilogue = 2 * 2 * c.wg_tile_m * c.epi_tile_n * out_itemsize
  if requantize:
    # fp32 tile + int8 codes + row maxima per 32 columns, per warpgroup
    epilogue = 2 * c.wg_tile_m * (c.tile_n * (4 + 1) + c.tile_n // 32 * 4)
  return c.max_concurrent_steps * stage + unpacked + epilogue + SMEM_RESERVE


def check_config(
  config: TuningConfig,
  *,
  swizzle: int,
  chunk: int | None,
  out_itemsize: int,
  requantize: bool = False,
  packed: tuple[bool, bool] = (False, False),
) -> None:
  """Raises ValueError naming the first hardware rule ``config`` breaks."""
  c = config
  if not isinstance(c, TuningConfig):
    raise ValueError(f"config must be a TuningConfig, got {c!r}")
  promoted = chunk is not None
  if promoted and c.tile_k % chunk:
    raise ValueError(
      f"TuningConfig.tile_k={c.tile_k} must be a multiple of the {chunk}-wide "
      "K blocks that are promoted one at a time"
    )
  n_sub = c.tile_k // chunk if promoted else 1
  if c.wg_tile_m not in (64, 128):
    raise ValueError(
      f"TuningConfig.wg_tile_m={c.wg_tile_m}: wgmma needs 64 or 128 rows per "
      "warpgroup"
    )
  if c.tile_n % 8 or not 8 <= c.tile_n <= 256:
    raise ValueError(
      f"TuningConfig.tile_n={c.tile_n}: wgmma needs N a multiple of 8 and at "
      "most 256"
    )
  if c.tile_k % swizzle or c.tile_k % 32:
    raise ValueError(
      f"TuningConfig.tile_k={c.tile_k}: 8-bit wgmma needs K steps that are a "
      f"multiple of 32 and of the {swizzle}-byte swizzle"
    )
  if packed[1] and c.tile_n % UNPACK_ROWS:
    raise ValueError(
      f"TuningConfig.tile_n={c.tile_n}: an INT4 b is unpacked in "
      f"{UNPACK_ROWS}-row bands (the 64-row register layouts of Mosaic's "
      f"4-bit upcast), so tile_n must be a multiple of {UNPACK_ROWS}"
    )
  if c.tile_n % c.epi_tile_n or c.epi_tile_n % 8:
    raise ValueError(
      f"TuningConfig.epi_tile_n={c.epi_tile_n} must be a multiple of 8 that "
      f"divides tile_n={c.tile_n}"
    )
  if c.wg_dimension not in ("m", "n"):
    raise ValueError(
      f"TuningConfig.wg_dimension must be 'm' or 'n', got {c.wg_dimension!r}"
    )
  if c.cluster not in (None, "m", "n"):
    raise ValueError(
      f"TuningConfig.cluster must be None, 'm' or 'n', got {c.cluster!r}"
    )
  if c.max_concurrent_steps < 2:
    raise ValueError(
      f"TuningConfig.max_concurrent_steps={c.max_concurrent_steps}: the "
      "pipeline needs at least 2 stages"
    )
  acc_regs = c.wg_tile_m * c.tile_n // THREADS_PER_WARPGROUP
  regs = acc_regs * (2 if promoted else 1)
  if regs > MAX_ACC_REGISTERS:
    raise ValueError(
      f"TuningConfig wg_tile_m x tile_n = {c.wg_tile_m} x {c.tile_n} needs "
      f"{regs} accumulator registers per thread"
      + (" (partial sum + fp32 carry)" if promoted else "")
      + f"; at most {MAX_ACC_REGISTERS} fit beside the rest of the kernel"
    )
  need = smem_bytes(
    c,
    n_sub=n_sub,
    promoted=promoted,
    out_itemsize=out_itemsize,
    requantize=requantize,
    packed=packed,
  )
  if need > SMEM_BYTES:
    raise ValueError(
      f"TuningConfig {c} needs {need} bytes of shared memory per CTA; a "
      f"Hopper CTA has {SMEM_BYTES}. Lower max_concurrent_steps or the tiles"
    )


# The tile configs ``benchmarks/_sweep.py`` times on the H200 against each
# default, per kernel: (promoted, n_sub, alternatives as replace() kwargs).
# Kernel names: ``int8_block<S>`` (S x S blocks), ``fp8_tensor`` (per-tensor
# scales) and ``fp8_1x128_128x128`` (1 x 128 groups x 128 x 128 blocks).
_CANDIDATES = {
  "int8_block128": (
    True,
    1,
    (
      dict(wg_dimension="n"),
      dict(tile_n=192),
      dict(max_concurrent_steps=3),
      dict(cluster="m"),
    ),
  ),
  "int8_block32": (True, 4, (dict(wg_dimension="n"),)),
  "fp8_tensor": (
    False,
    1,
    (dict(tile_n=128), dict(wg_dimension="n", tile_n=128), dict(cluster="m")),
  ),
  "fp8_1x128_128x128": (
    True,
    1,
    (dict(wg_dimension="n"), dict(tile_n=192), dict(cluster="m")),
  ),
}
CANDIDATE_KERNELS = tuple(_CANDIDATES)


def candidate_configs(kernel: str) -> list[TuningConfig]:
  """The default config of ``kernel`` (bf16 out) first, then alternatives.

  ``kernel`` is one of ``CANDIDATE_KERNELS``. Alternatives get the deepest
  pipeline that fits, unless they set ``max_concurrent_steps`` themselves.
  """
  if kernel not in _CANDIDATES:
    raise ValueError(
      f"kernel must be one of {CANDIDATE_KERNELS}, got {kernel!r}"
    )
  promoted, n_sub, changes = _CANDIDATES[kernel]
  fit = dict(n_sub=n_sub, promoted=promoted, out_itemsize=2)
  base = default_config(**fit)
  return [base] + [
    dataclasses.replace(base, **c)
    if "max_concurrent_steps" in c
    else deepest_pipeline(dataclasses.replace(base, **c), **fit)
    for c in changes
  ]
