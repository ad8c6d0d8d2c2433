"""The implementations of ``int4_dot_general``: ``"xla"``, ``"pallas"``
and ``"mosaic"``.

Each runs the three kernels of INT4 training on canonical tensors, with the
same bits (the ``"pallas"`` kernels run the reference's own functions on
their tiles):

==================  ================================  =======================
step                ``"xla"`` (plain jnp)             ``"pallas"``
==================  ================================  =======================
rotate + quantize   ``block_hadamard``, then LSQ      :mod:`pallas_kernels.
+ pack              codes or absmax blocks, then      hadamard_quantize`: one
                    ``pack_int4``                     pass, x read once
backward rotation   ``block_hadamard``, cast          ``hadamard_rotate``
                                                      (rotate and cast at once)
bit split           ``bit_split`` with hashed         :mod:`pallas_kernels.
                    uniforms                          split_quantize` (SR in
                                                      the kernel, row squares)
GEMM                unpack, transpose,                :mod:`pallas_kernels.
                    ``scaled_matmul`` (int8 dots)     int4_matmul`: unpack in
                                                      registers, int8 dots
==================  ================================  =======================

A :class:`GemmOperand` is stored as the producer wrote it (packed along K,
or the ``c = 14 hi + lo`` codes as (B, M, N)); a backward GEMM reads it
**transposed** (contraction-major) instead of transposing it in memory.

``"mosaic"`` is ``"pallas"`` with the GEMMs on the Hopper INT4 GEMM
(:mod:`pallas_kernels.mosaic.int4_matmul`: packed tiles by TMA, unpacked to
int8 in SMEM, int8 ``wgmma``; the backward's transposed operands are
transposed by XLA first). Its quantizers are the portable kernels: there
are no Mosaic GPU Hadamard or bit-split kernels, and the census says so
(each GEMM's operands are "quantized by pallas").

``"pallas"`` needs per-tensor or S x S scales with S in
:data:`pallas_kernels.int4_matmul.INT4_GEMM_BLOCKS` (``"mosaic"``: S of 32
or more); asking for either with another config raises
(:meth:`Int4Implementation.unsupported_reason`). ``implementation=None``
picks ``"pallas"`` then ``"xla"`` on a GPU and ``"xla"`` elsewhere (the
kernels run interpreted on a CPU, which is for tests); ``"mosaic"`` only
when asked for, until an H200 has timed it.
"""

import abc
import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from lowprec_jax._implementations import Implementation, ImplementationRegistry
from lowprec_jax.formats._format import Int4
from lowprec_jax.formats._hadamard import switch_on_block
from lowprec_jax.formats._lsq import lsq_quantize
from lowprec_jax.formats._quantize import quantize
from lowprec_jax.ops._int4_config import Int4Config
from pallas_kernels import tiles
from pallas_kernels.hadamard import block_hadamard
from pallas_kernels.hadamard_quantize import (
  hadamard_quantize_blocks,
  hadamard_quantize_blocks_reference,
  hadamard_quantize_lsq,
  hadamard_rotate,
)
from pallas_kernels.int4_matmul import (
  Int4Operand,
  int4_matmul,
  int4_matmul_reference,
)
from pallas_kernels.int4_matmul import (
  unsupported_reason as gemm_unsupported_reason,
)
from pallas_kernels.mosaic import int4_matmul as mosaic_gemm
from pallas_kernels.split_quantize import (
  split_quantize,
  split_quantize_blocks,
  split_quantize_blocks_reference,
  split_quantize_reference,
)

_LSQ_TILE = None  # LSQ scales are per tensor


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GemmOperand:
  """Codes and scales of one GEMM operand, stored as ``layout`` says
  (:class:`pallas_kernels.int4_matmul.Int4Operand`: scale tile, packed,
  transposed); the logical operand is (B, R, K)."""

  codes: Array
  scale: Array
  layout: Int4Operand = dataclasses.field(metadata=dict(static=True))

  @property
  def tile(self) -> tiles.Tile:
    return self.layout.tile

  @property
  def packed(self) -> bool:
    return self.layout.packed

  def transposed(self) -> "GemmOperand":
    """The same stored codes read as the transposed logical operand."""
    flipped = dataclasses.replace(
      self.layout, transposed=not self.layout.transposed
    )
    return GemmOperand(self.codes, self.scale, flipped)

  def materialized(self) -> tuple[Array, Array]:
    """(int8 codes (B, R, K), scales) of the logical operand."""
    return self.layout.materialized(self.codes, self.scale)


def per_tensor(codes: Array, scale: Array) -> GemmOperand:
  """An int8 (B, R, K) operand with one scale."""
  return GemmOperand(codes, scale.reshape(1, 1, 1), Int4Operand())


class Int4Implementation(Implementation):
  """One way to run the INT4 op's kernels (module docstring)."""

  def unsupported_reason(self, request: Int4Config) -> str | None:
    return None

  @property
  def quantizer(self) -> str:
    """The implementation whose kernels quantize here (the census's
    "quantized by")."""
    return self.name

  def rotate_quantize(
    self, x: Array, index: Array, candidates, step, config, transposed=False
  ) -> tuple[GemmOperand, Array | None]:
    """(packed operand of ``x H``, packed LSQ derivative codes or None),
    with H the Hadamard block ``candidates[index]``; x (B, R, K), or stored
    (B, K, R) when ``transposed`` (a weight stored (K, N))."""
    return switch_on_block(
      index,
      candidates,
      lambda b, v: self._rotate_quantize(v, b, step, config, transposed),
      x,
    )

  def rotate(
    self, x: Array, index: Array, candidates, out_dtype, transposed_out=False
  ) -> Array:
    """``x H`` in ``out_dtype`` (the backward's ``H^T = H``), written
    (B, K, R) when ``transposed_out``."""
    return switch_on_block(
      index,
      candidates,
      lambda b, v: self._rotate(v, b, out_dtype, transposed_out),
      x,
    )

  @abc.abstractmethod
  def _rotate(self, x: Array, block: int, out_dtype, transposed_out):
    """:meth:`rotate` for a static Hadamard block."""

  @abc.abstractmethod
  def _rotate_quantize(self, x, block: int, step, config, transposed):
    """:meth:`rotate_quantize` for a static Hadamard block."""

  @staticmethod
  @abc.abstractmethod
  def split_kernel(g, sigma, seed, *, split, parts):
    """:func:`pallas_kernels.split_quantize.split_quantize` or its twin."""

  @staticmethod
  @abc.abstractmethod
  def split_blocks_kernel(g, seed, *, split, block):
    """:func:`pallas_kernels.split_quantize.split_quantize_blocks` or its
    twin."""

  def split(self, g: Array, sigma: Array, seed: Array, split: str, parts):
    """``c = 14 hi + lo`` (parts=False) or ``(hi, lo, squared row norms of
    [14 hi; lo] (B, 2M) int32)`` of g's bit split, SR hashed with ``seed``."""
    out = self.split_kernel(g, sigma, seed, split=split, parts=parts)
    if not parts:
      return out
    hi, lo, hi_sq, lo_sq = out
    return hi, lo, jnp.concatenate([hi_sq, lo_sq], axis=1)

  def split_blocks(self, g: Array, seed: Array, split: str, block: int):
    """(``c = 14 hi + lo`` int8, sigma (B, M/S, N/S)) of g split with a
    sigma per ``block`` x ``block`` square."""
    return self.split_blocks_kernel(g, seed, split=split, block=block)

  @staticmethod
  @abc.abstractmethod
  def gemm(a_q, a_s, b_q, b_s, *, a, b, out_dtype) -> Array:
    """:func:`pallas_kernels.int4_matmul.int4_matmul` or its twin."""

  def matmul(self, a: GemmOperand, b: GemmOperand, out_dtype) -> Array:
    """The (B, M, N) product of two logical operands."""
    return self.gemm(
      a.codes,
      a.scale,
      b.codes,
      b.scale,
      a=a.layout,
      b=b.layout,
      out_dtype=out_dtype,
    )


def _operand(codes, scale, tile) -> GemmOperand:
  return GemmOperand(codes, scale, Int4Operand(tile, packed=True))


def _lsq_operand(q: Array, d: Array, step: Array):
  scale = jnp.abs(step).astype(jnp.float32)
  return _operand(q, scale.reshape(1, 1, 1), _LSQ_TILE), d


@dataclasses.dataclass(frozen=True)
class Int4Xla(Int4Implementation):
  """Plain jnp and XLA dots: the reference every kernel matches."""

  name: str = "xla"

  def _rotate(self, x, block, out_dtype, transposed_out):
    out = block_hadamard(x, block).astype(out_dtype)
    return out.mT if transposed_out else out

  def _rotate_quantize(self, x, block, step, config, transposed):
    if transposed:
      x = x.mT
    fmt = Int4()
    if config.scale == "lsq":
      q, d = lsq_quantize(block_hadamard(x, block), step)
      return _lsq_operand(fmt.pack(q), fmt.pack(d), step)
    if config.block is None:  # per-tensor absmax
      qt = quantize(block_hadamard(x, block), config.format)
      return _operand(qt.qvalue, qt.scale, config.format.tile), None
    q, s = hadamard_quantize_blocks_reference(
      x,
      hadamard_block=block,
      block=config.block,
      clip_candidates=config.clip_candidates,
    )
    return _operand(q, s, config.format.tile), None

  split_kernel = staticmethod(split_quantize_reference)
  split_blocks_kernel = staticmethod(split_quantize_blocks_reference)

  gemm = staticmethod(int4_matmul_reference)


@dataclasses.dataclass(frozen=True)
class Int4Pallas(Int4Implementation):
  """The portable kernels (Triton on a GPU, the interpreter on a CPU)."""

  name: str = "pallas"

  # Why the GEMM kernel cannot multiply two operand layouts (None: it can).
  gemm_unsupported_reason = staticmethod(gemm_unsupported_reason)

  def unsupported_reason(self, request: Int4Config) -> str | None:
    if request.scale == "absmax" and request.block is None:
      return (
        "per-tensor absmax INT4 scales have no kernel here (the fused "
        "Hadamard quantizer takes LSQ steps or S x S blocks)"
      )
    layout = Int4Operand(request.format.tile)
    if request.split_block is not None:
      split = request.split_block
      return self.gemm_unsupported_reason(Int4Operand((split, split)), layout)
    return self.gemm_unsupported_reason(layout, layout)

  def _rotate(self, x, block, out_dtype, transposed_out):
    return hadamard_rotate(
      x,
      hadamard_block=block,
      out_dtype=out_dtype,
      transposed_out=transposed_out,
    )

  def _rotate_quantize(self, x, block, step, config, transposed):
    if config.scale == "lsq":
      q, d = hadamard_quantize_lsq(
        x, step, hadamard_block=block, transposed=transposed
      )
      return _lsq_operand(q, d, step)
    q, s = hadamard_quantize_blocks(
      x,
      hadamard_block=block,
      block=config.block,
      clip_candidates=config.clip_candidates,
      transposed=transposed,
    )
    return _operand(q, s, config.format.tile), None

  split_kernel = staticmethod(split_quantize)
  split_blocks_kernel = staticmethod(split_quantize_blocks)

  gemm = staticmethod(int4_matmul)


@dataclasses.dataclass(frozen=True)
class Int4Mosaic(Int4Pallas):
  """The portable quantizers and the Hopper INT4 GEMM (module docstring)."""

  name: str = "mosaic"

  @property
  def quantizer(self) -> str:
    return "pallas"

  gemm_unsupported_reason = staticmethod(mosaic_gemm.unsupported_reason)
  gemm = staticmethod(mosaic_gemm.int4_matmul)


INT4_GEMMS = ImplementationRegistry(
  op="int4_dot_general",
  implementations=(Int4Pallas(), Int4Mosaic(), Int4Xla()),
  auto={"gpu": ("pallas", "xla")},
)
