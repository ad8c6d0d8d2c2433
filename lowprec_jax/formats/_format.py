"""Quantization formats: a number grid plus the tile of elements sharing a scale.

A format is static (hashable, frozen) metadata. It says how a tensor is
quantized; :func:`lowprec_jax.formats.quantize` does it.

Tiles are defined on the last two axes of a tensor, read as a matrix of
``rows x cols``; every leading axis gets its own scales. ``tile=None`` means
one scale for the whole tensor (all axes). A tile entry of ``None`` spans the
whole axis, so ``(1, None)`` is one scale per row and ``(1, 128)`` is groups
of 128 consecutive elements along a row. Inside the quantized matmul the
operands are laid out as ``(batch, rows, contraction)``, so a ``(1, 128)``
tile groups along the contraction axis.

Every format quantizes with

    scale = absmax(tile) * RN(1 / qmax)   (fp32; 1 for an all-zero tile)
    q     = round(x * (1 / scale))     (saturated to the grid)
    x_hat = q * scale

and formats follow the abstract/final rule: :class:`QuantFormat` is abstract,
:class:`Int8Block`, :class:`Int4` and :class:`Fp8` are final. A format may
store its codes packed (:class:`Int4`: two per byte); ``pack`` and ``unpack``
convert between the stored array and the logical codes.
"""

import abc
import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np
from jax import Array

from pallas_kernels import int4, tiles
from pallas_kernels.numerics import NumberGrid
from pallas_kernels.tiles import Tile, TileKind

Rounding = Literal["nearest", "stochastic"]
_FP8_DTYPES = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}
SCALE_DTYPES = ("float32", "bfloat16")


class QuantFormat(abc.ABC):
  """A quantized number format and its scaling tile (abstract)."""

  @property
  @abc.abstractmethod
  def storage_dtype(self) -> np.dtype:
    """dtype of the stored codes."""

  @property
  @abc.abstractmethod
  def qmax(self) -> float:
    """Largest representable code magnitude; absmax maps onto it."""

  @property
  @abc.abstractmethod
  def tile(self) -> Tile:
    """Elements sharing one scale on the last two axes (None: per-tensor)."""

  @property
  @abc.abstractmethod
  def name(self) -> str:
    """Short name used in the census and error messages."""

  @abc.abstractmethod
  def transpose(self) -> "QuantFormat":
    """The format of the same codes after swapping the last two axes."""

  @property
  def scale_dtype(self) -> np.dtype:
    """dtype of the stored scales (float32 unless a format says otherwise)."""
    return np.dtype(np.float32)

  @property
  def grid(self) -> NumberGrid:
    """The codes' number grid (the rounding rule and ``qmax``)."""
    return NumberGrid(self.storage_dtype)

  @property
  def family(self) -> str:
    """'int8', 'int4' or 'fp8': operands of one GEMM must share a family."""
    if self.grid.is_int4:
      return "int4"
    return "int8" if self.grid.is_int8 else "fp8"

  def pack(self, codes: Array) -> Array:
    """Logical codes (the grid's rounding output) -> the stored array."""
    return codes

  def unpack(self, stored: Array) -> Array:
    """The stored array -> logical codes (one per element)."""
    return stored

  def stored_shape(self, shape) -> tuple[int, ...]:
    """The stored array's shape for codes of logical ``shape``."""
    return tuple(shape)

  def logical_shape(self, stored_shape) -> tuple[int, ...]:
    """The logical shape of a stored array of ``stored_shape``."""
    return tuple(stored_shape)


def _check_size(name: str, value: int, allowed: tuple[int, ...]) -> None:
  if not isinstance(value, int) or isinstance(value, bool):
    raise ValueError(
      f"{name} must be an int in {allowed}, got {value!r} "
      f"of type {type(value).__name__}"
    )
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value}")


@dataclasses.dataclass(frozen=True, slots=True)
class Int8Block(QuantFormat):
  """INT8 codes in [-127, 127] with one fp32 scale per square block.

  Jetfire's format: ``s = absmax(block) / 127``, ``q = rint(x / s)``. The
  block is square, so the same codes and scale grid quantize ``X`` and
  ``X^T``: one quantization serves the forward and both backward GEMMs.
  -128 is never produced (the grid is symmetric).

  Args:
    block: block side; 32 (Jetfire, the default), 64 or 128 (Hopper).
  """

  block: int = 32

  def __post_init__(self):
    _check_size("Int8Block.block", self.block, tiles.BLOCK_SIZES)

  @property
  def storage_dtype(self) -> np.dtype:
    return np.dtype(np.int8)

  @property
  def qmax(self) -> float:
    return 127.0

  @property
  def tile(self) -> Tile:
    return (self.block, self.block)

  @property
  def name(self) -> str:
    return f"int8_block{self.block}"

  def transpose(self) -> "Int8Block":
    return self


_INT4_TILES = (
  TileKind.TENSOR,
  TileKind.ROWS,
  TileKind.COLUMNS,
  TileKind.ROW_GROUPS,
  TileKind.COLUMN_GROUPS,
  TileKind.BLOCKS,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Int4(QuantFormat):
  """INT4 codes packed two per byte, with fp32 absmax scales over a tile.

  ``s = absmax(tile) / 7``, ``q = round(x / s)`` in [-7, 7] (nearest-even or
  stochastic, the shared numerics); -8 is never produced by this scale rule
  (learned-step quantizers use the full [-8, 7]). Codes are stored packed
  along the last axis (:mod:`pallas_kernels.int4`: even element in the low
  nibble), so the last axis must be even; a :class:`QTensor` of this format
  holds the uint8 array and reports the logical shape.

  Per-tensor scales are the paper's (faithful, but one outlier token sets
  the step of the whole tensor); groups (1 x G) along the contraction or
  square blocks bound the damage. Use the constructors :meth:`per_tensor`,
  :meth:`groups`, :meth:`blocks`.

  Args:
    tile_shape: ``None`` (per-tensor), ``(1, None)``, ``(None, 1)``,
      ``(1, G)``, ``(G, 1)`` or ``(S, S)`` with G, S in
      ``tiles.GROUP_SIZES``.
  """

  tile_shape: Tile = None

  def __post_init__(self):
    try:
      kind = tiles.kind_of(self.tile_shape)
    except ValueError:
      kind = None
    if kind not in _INT4_TILES:
      raise ValueError(
        "Int4.tile_shape must be None, (1, None), (None, 1), (1, G), (G, 1) "
        "or (S, S), "
        f"got {self.tile_shape!r}"
      )
    if kind in (TileKind.ROW_GROUPS, TileKind.COLUMN_GROUPS, TileKind.BLOCKS):
      _check_size(
        "Int4 group size", tiles.size_of(self.tile_shape), tiles.GROUP_SIZES
      )

  @classmethod
  def per_tensor(cls) -> "Int4":
    """One scale for the whole tensor."""
    return cls(None)

  @classmethod
  def groups(cls, size: int = 32) -> "Int4":
    """One scale per 1 x ``size`` group along the last axis."""
    return cls((1, size))

  @classmethod
  def blocks(cls, size: int = 32) -> "Int4":
    """One scale per ``size`` x ``size`` block of the last two axes."""
    return cls((size, size))

  @property
  def storage_dtype(self) -> np.dtype:
    return np.dtype(np.uint8)

  @property
  def grid(self) -> NumberGrid:
    return NumberGrid.int4()

  @property
  def qmax(self) -> float:
    return self.grid.qmax

  @property
  def tile(self) -> Tile:
    return self.tile_shape

  @property
  def name(self) -> str:
    return f"int4_{tiles.name(self.tile_shape)}"

  def transpose(self) -> "Int4":
    return Int4(tiles.transpose(self.tile_shape))

  def pack(self, codes: Array) -> Array:
    return int4.pack_int4(codes)

  def unpack(self, stored: Array) -> Array:
    return int4.unpack_int4(stored)

  def stored_shape(self, shape) -> tuple[int, ...]:
    return int4.packed_shape(shape)

  def logical_shape(self, stored_shape) -> tuple[int, ...]:
    return int4.unpacked_shape(stored_shape)


@dataclasses.dataclass(frozen=True, slots=True)
class Fp8(QuantFormat):
  """FP8 codes (E4M3 or E5M2) with fp32 scales over a tile.

  ``s = absmax(tile) / fmax`` with ``fmax`` = 448 (E4M3) or 57344 (E5M2); the
  scaled value is cast with round-to-nearest-even after saturating to
  ``[-fmax, fmax]`` (E4M3 has no infinity: an unsaturated overflow is NaN).

  Use the constructors: :meth:`per_tensor`, :meth:`per_row`,
  :meth:`groups` (1 x G), :meth:`blocks` (B x B).

  ``scale_storage="bfloat16"`` stores each scale in 2 bytes instead of 4, for
  tensors saved for the backward pass in small groups (COAT keeps 1 x 16
  activation groups with bf16 scales: at 4 bytes per 16 codes the fp32 scale
  would cost a quarter of the codes' memory). The scale is rounded *up* to
  bf16 before the codes are computed, so codes and stored scale agree exactly
  (COAT rounds after quantizing, so its dequantized values drift by up to
  2^-9) and ``|x| / scale`` still fits the grid. GEMM operands keep fp32
  scales.

  Args:
    dtype: "e4m3" (``float8_e4m3fn``) or "e5m2" (``float8_e5m2``).
    tile_shape: see the module docstring; ``None`` is per-tensor.
    scale_storage: "float32" (default) or "bfloat16".
  """

  dtype: Literal["e4m3", "e5m2"] = "e4m3"
  tile_shape: Tile = None
  scale_storage: Literal["float32", "bfloat16"] = "float32"

  def __post_init__(self):
    if self.dtype not in _FP8_DTYPES:
      raise ValueError(
        f"Fp8.dtype must be one of {tuple(_FP8_DTYPES)}, got {self.dtype!r}"
      )
    if self.scale_storage not in SCALE_DTYPES:
      raise ValueError(
        f"Fp8.scale_storage must be one of {SCALE_DTYPES}, got "
        f"{self.scale_storage!r}"
      )
    tile = self.tile_shape
    try:
      kind = tiles.kind_of(tile)
    except ValueError:
      raise ValueError(
        "Fp8.tile_shape must be None, (1, None), (None, 1), (1, G), (G, 1) "
        f"or (S, S), got {tile!r}"
      ) from None
    if kind in (TileKind.ROW_GROUPS, TileKind.COLUMN_GROUPS):
      _check_size("Fp8 group size", tiles.size_of(tile), tiles.GROUP_SIZES)
    elif kind is TileKind.BLOCKS:
      _check_size("Fp8 block size", tiles.size_of(tile), tiles.GROUP_SIZES)

  @classmethod
  def per_tensor(cls, dtype: Literal["e4m3", "e5m2"] = "e4m3") -> "Fp8":
    """One scale for the whole tensor (current scaling)."""
    return cls(dtype, None)

  @classmethod
  def per_row(cls, dtype: Literal["e4m3", "e5m2"] = "e4m3") -> "Fp8":
    """One scale per row (per token for activations)."""
    return cls(dtype, (1, None))

  @classmethod
  def groups(
    cls,
    size: int = 128,
    dtype: Literal["e4m3", "e5m2"] = "e4m3",
    scale_storage: Literal["float32", "bfloat16"] = "float32",
  ):
    """One scale per 1 x ``size`` group along the last axis."""
    return cls(dtype, (1, size), scale_storage)

  @classmethod
  def blocks(cls, size: int = 128, dtype: Literal["e4m3", "e5m2"] = "e4m3"):
    """One scale per ``size`` x ``size`` block of the last two axes."""
    return cls(dtype, (size, size))

  @property
  def storage_dtype(self) -> np.dtype:
    return np.dtype(_FP8_DTYPES[self.dtype])

  @property
  def scale_dtype(self) -> np.dtype:
    return np.dtype(jnp.dtype(self.scale_storage))

  @property
  def qmax(self) -> float:
    return float(jnp.finfo(_FP8_DTYPES[self.dtype]).max)

  @property
  def tile(self) -> Tile:
    return self.tile_shape

  @property
  def name(self) -> str:
    suffix = "" if self.scale_storage == "float32" else "_bf16scale"
    return f"{self.dtype}_{tiles.name(self.tile_shape)}{suffix}"

  def transpose(self) -> "Fp8":
    return Fp8(self.dtype, tiles.transpose(self.tile_shape), self.scale_storage)
