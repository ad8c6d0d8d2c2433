"""Int4Config: the INT4 training recipe's static description.

INT4 training ("Training Transformers with 4-bit Integers") cannot be
written as three operand formats (:class:`DotQuantConfig`): the forward
rotates both operands by a Hadamard block chosen per layer, its step sizes
may be learned, and the gradient is bit-split and row-sampled. This config
names those choices; :func:`lowprec_jax.ops.int4_dot_general` runs them.

=================  =============================  ===========================
field              int4_hq (faithful)             int4_hq_b32 (ours)
=================  =============================  ===========================
scale              "lsq": per-tensor learned step "absmax": 32 x 32 blocks,
                   (init 2 mean|v| / sqrt(7))     codes in [-7, 7]
hadamard_blocks    every 2^k <= 1024 dividing K,  the same
                   chosen on the first call
split              "faithful" (sigma = 98/max|g|, "full" (sigma = 105/max|g|,
                   hi, lo in +-6, lo clipped)     no clip, unbiased)
sampling           "leverage": [hi; lo] rows,     "all": one INT8 GEMM on
                   budget N of 2N, static size    14 hi + lo
=================  =============================  ===========================

``int4_hq_released`` is ``int4_hq`` with every row kept, as the authors'
released kernels run it (they skip the sampling).

``int4_hq_b16`` is ``int4_hq_b32`` with 16 x 16 blocks and the per-block
clip search (``clip_candidates``): finer scales, a third less rounding
error, a sixteenth of a bit more per element for the scales.

Why ours: per-tensor steps let one outlier token set the step of the whole
activation; square blocks bound it to a 32 x 32 tile and, being square,
serve the forward (contraction over K) and the weight gradient (contraction
over tokens) from one set of codes, as Jetfire's INT8 blocks do (a 1 x G
group would put a scale on every element of the weight gradient's
contraction). And Hopper has no INT4 tensor cores, so an INT4 GEMM runs on
the INT8 ``wgmma`` anyway, and ``14 hi + lo`` fits int8: the unsampled split
costs what one sampled INT4 GEMM costs, with no sampling variance.
"""

import dataclasses
from typing import Literal

from lowprec_jax.formats._format import Int4
from pallas_kernels import tiles
from pallas_kernels.bit_split import check_split
from pallas_kernels.clip_search import CLIP_CANDIDATES, check_clip_candidates
from pallas_kernels.hadamard import HADAMARD_BLOCKS, check_hadamard_block

SCALES = ("lsq", "absmax")
SAMPLINGS = ("leverage", "all")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Int4Config:
  """How one Linear trains in INT4 (module docstring).

  Args:
    name: shown in the census and errors.
    scale: "lsq" (per-tensor learned step sizes for x and w; needs the
      state :class:`lowprec_jax.nn.QuantDotGeneral` keeps) or "absmax".
    block: for "absmax", the side of the square scale blocks (None: per
      tensor).
    hadamard_blocks: candidate Hadamard block sizes (those dividing K are
      tried); one entry fixes the block.
    rechoose_every: re-run the block search every this many calls (0: only
      on the first call), and with it LSQ's initialisation of the base
      steps from that call's operands (the learned log-scale factor
      :class:`lowprec_jax.nn.LsqStep` is kept). The paper initialises once,
      for fine-tuning; from scratch the weights grow several-fold and a
      step learned by Adam in log scale lags behind (see the README).
    clip_candidates: for "absmax" blocks, the fractions of each block's
      maximum its scale may clip to, chosen per block by the smallest
      squared error (:mod:`pallas_kernels.clip_search`); ``(1.0,)`` is plain
      absmax.
    split: "faithful" or "full" (:mod:`pallas_kernels.bit_split`).
    split_block: None (the paper's per-tensor sigma) or S: a sigma per S x S
      block of the gradient (needs ``sampling="all"`` and, with block
      scales, ``block == split_block``): a token whose gradient is small
      keeps its resolution however large another token's is.
    sampling: "leverage" (static-size leverage-score sampling of the split
      rows) or "all" (every row: one INT8 GEMM on ``14 hi + lo``, the
      released code's keep-every-non-zero-row mode).
  """

  name: str = "int4_custom"
  scale: Literal["lsq", "absmax"] = "lsq"
  block: int | None = None
  hadamard_blocks: tuple[int, ...] = HADAMARD_BLOCKS
  rechoose_every: int = 0
  clip_candidates: tuple[float, ...] = (1.0,)
  split: Literal["faithful", "full"] = "faithful"
  split_block: int | None = None
  sampling: Literal["leverage", "all"] = "leverage"

  def __post_init__(self):
    if self.scale not in SCALES:
      raise ValueError(
        f"Int4Config.scale must be one of {SCALES}, got {self.scale!r}"
      )
    if self.block is not None:
      if self.scale == "lsq":
        raise ValueError(
          "Int4Config.block needs scale='absmax' (the learned step is per "
          f"tensor), got block={self.block!r}"
        )
      Int4.blocks(self.block)  # ValueError for a size not in GROUP_SIZES
    if not isinstance(self.hadamard_blocks, tuple) or not self.hadamard_blocks:
      raise ValueError(
        "Int4Config.hadamard_blocks must be a non-empty tuple, got "
        f"{self.hadamard_blocks!r}"
      )
    for b in self.hadamard_blocks:
      check_hadamard_block(b, name="Int4Config.hadamard_blocks entry")
    if not isinstance(self.rechoose_every, int) or self.rechoose_every < 0:
      raise ValueError(
        "Int4Config.rechoose_every must be an int >= 0, got "
        f"{self.rechoose_every!r}"
      )
    check_clip_candidates(self.clip_candidates, "Int4Config.clip_candidates")
    if len(self.clip_candidates) > 1 and self.block is None:
      raise ValueError(
        "Int4Config.clip_candidates searches a scale per S x S block: it "
        "needs scale='absmax' and a block, got scale="
        f"{self.scale!r}, block={self.block!r}"
      )
    check_split(self.split)
    if self.sampling not in SAMPLINGS:
      raise ValueError(
        f"Int4Config.sampling must be one of {SAMPLINGS}, got {self.sampling!r}"
      )
    if self.split_block is not None:
      if self.split_block not in tiles.GROUP_SIZES:
        raise ValueError(
          f"Int4Config.split_block must be None or one of {tiles.GROUP_SIZES}"
          f", got {self.split_block!r}"
        )
      if self.sampling != "all":
        raise ValueError(
          "Int4Config.split_block needs sampling='all' (leverage sampling "
          "scores rows under one per-tensor sigma)"
        )
      if self.block is not None and self.block != self.split_block:
        raise ValueError(
          f"Int4Config.split_block={self.split_block} must equal block="
          f"{self.block}: both backward GEMMs promote the two operands' "
          "block scales over the same K chunks"
        )
    if self.sampling == "leverage" and self.block is not None:
      raise ValueError(
        "Int4Config.sampling='leverage' needs per-tensor scales (block=None): "
        "the weight gradient gathers sampled token rows of x, and block "
        f"scales would differ along that contraction; got block={self.block}"
      )

  @property
  def quantized(self) -> bool:
    return True

  @property
  def needs_seed(self) -> bool:
    return True  # the low part of the split rounds stochastically

  @property
  def format(self) -> Int4:
    """The forward operands' format in the rotated domain (the LSQ codes
    use the full [-8, 7] with one learned scale: named per tensor)."""
    return Int4.per_tensor() if self.block is None else Int4.blocks(self.block)

  @property
  def operand_name(self) -> str:
    """The forward operands' name in the census."""
    if self.scale == "lsq":
      return "int4_lsq_tensor"
    return f"int4_{tiles.name(self.format.tile)}"

  @property
  def gradient_name(self) -> str:
    """The gradient operand's name in the census."""
    name = f"int4x2_{self.split}_{self.sampling}"
    if self.split_block is not None:
      name += f"_{self.split_block}x{self.split_block}"
    return name

  def describe(self) -> str:
    return (
      f"fwd: {self.operand_name} x {self.operand_name} (Hadamard along K)\n"
      f"dlhs: {self.gradient_name} x {self.operand_name}\n"
      f"drhs: {self.gradient_name} x {self.operand_name}"
    )


def int4_hq() -> Int4Config:
  """The paper's method: LSQ per-tensor INT4 with the Hadamard quantizer,
  faithful bit split and leverage-score sampling."""
  return Int4Config(name="int4_hq")


def int4_hq_released() -> Int4Config:
  """The paper's method as its released CUDA kernels run it: ``int4_hq``
  with every row of the split kept (``sampling="all"``: their
  leverage-score sampler is bypassed, ``p_i = 1`` for every non-zero row;
  ``../shared/docs/methods.md`` section 3.3). One INT8 GEMM on
  ``14 hi + lo`` instead of a sampled INT4 one: no sampling variance."""
  return Int4Config(name="int4_hq_released", sampling="all")


def int4_hq_b16() -> Int4Config:
  """Ours, the most accurate: absmax 16 x 16 INT4 blocks with the per-block
  clip search (:mod:`pallas_kernels.clip_search`) after the Hadamard
  rotation, the full bit split, every row in one GEMM."""
  return Int4Config(
    name="int4_hq_b16",
    scale="absmax",
    block=16,
    clip_candidates=CLIP_CANDIDATES,
    split="full",
    sampling="all",
  )


def int4_hq_b32() -> Int4Config:
  """Ours: absmax 32 x 32 INT4 blocks after the Hadamard rotation, the full
  bit split, every row in one INT8 GEMM (module docstring)."""
  return Int4Config(
    name="int4_hq_b32", scale="absmax", block=32, split="full", sampling="all"
  )
