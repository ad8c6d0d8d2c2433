"""INT4 nibble packing: two 4-bit codes per byte along the last axis.

INT4 codes live in [-8, 7] (two's complement). They are stored and saved
packed, and unpacked to int8 only inside a computation (Hopper has no 4-bit
tensor-core path: an INT4 GEMM runs on the INT8 ``wgmma`` with unpacked
codes, so INT4 buys bytes, not FLOPs). The layout, for codes ``c`` of shape
``(..., K)`` with K even:

    packed[..., j] = (c[..., 2j] & 0xF) | (c[..., 2j + 1] & 0xF) << 4   (uint8)

i.e. the even element in the low nibble (the layout of CUTLASS's
``int4b_t`` and of ``jnp.int4`` arrays in memory). Unpacking sign-extends
each nibble with arithmetic shifts. Only integer shifts, masks and bitcasts:
the same code runs in XLA and inside kernels.

>>> import jax.numpy as jnp
>>> packed = pack_int4(jnp.array([[1, -2, -8, 7]], jnp.int8))
>>> [hex(v) for v in packed[0].tolist()]
['0xe1', '0x78']
>>> unpack_int4(packed).tolist()
[[1, -2, -8, 7]]
"""

import jax.numpy as jnp
from jax import Array, lax
from jax.core import Tracer

from pallas_kernels.checks import describe
from pallas_kernels.numerics import INT4_MAX, INT4_MIN


def packed_shape(shape) -> tuple[int, ...]:
  """The stored shape of INT4 codes of ``shape`` (last axis halved).

  Raises ValueError unless the last axis exists and is even.
  """
  shape = tuple(shape)
  if not shape or shape[-1] % 2:
    raise ValueError(
      f"INT4 codes are packed two per byte along the last axis, which must "
      f"be even; got shape {shape}"
    )
  return (*shape[:-1], shape[-1] // 2)


def unpacked_shape(shape) -> tuple[int, ...]:
  """The logical shape of packed INT4 codes of stored ``shape``."""
  shape = tuple(shape)
  if not shape:
    raise ValueError("packed INT4 codes need at least one axis, got a scalar")
  return (*shape[:-1], shape[-1] * 2)


def pack_int4(codes: Array) -> Array:
  """int8 codes in [-8, 7] of shape (..., K), K even -> uint8 (..., K/2).

  Values outside [-8, 7] are a caller's bug: they would wrap, so they are
  rejected when ``codes`` is concrete (and left to the caller under jit).
  """
  _check_dtype("codes", codes, jnp.int8)
  packed_shape(codes.shape)
  if not isinstance(codes, Tracer):
    low, high = int(jnp.min(codes, initial=0)), int(jnp.max(codes, initial=0))
    if low < INT4_MIN or high > INT4_MAX:
      raise ValueError(
        f"codes must lie in [{INT4_MIN}, {INT4_MAX}] to be packed as INT4, "
        f"got values in [{low}, {high}] (shape {codes.shape})"
      )
  return pack_pairs(codes)


def pack_pairs(codes: Array) -> Array:
  """:func:`pack_int4` without the checks: the shifts and masks alone, which
  also run inside kernels (Triton lowers the unstack to ``tt.split``)."""
  nibbles = lax.bitcast_convert_type(codes, jnp.uint8) & jnp.uint8(0xF)
  pairs = nibbles.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
  even, odd = jnp.unstack(pairs, axis=-1)
  return even | (odd << jnp.uint8(4))


def unpack_int4(packed: Array) -> Array:
  """uint8 (..., K/2) -> int8 codes in [-8, 7] of shape (..., K)."""
  _check_dtype("packed", packed, jnp.uint8)
  unpacked_shape(packed.shape)
  return unpack_pairs(packed)


def unpack_pairs(packed: Array) -> Array:
  """:func:`unpack_int4` without the checks (runs inside kernels too:
  Triton lowers the stack to ``tt.join``)."""
  signed = lax.bitcast_convert_type(packed, jnp.int8)
  low = (signed << jnp.int8(4)) >> jnp.int8(4)  # arithmetic: sign-extends
  high = signed >> jnp.int8(4)
  pairs = jnp.stack([low, high], axis=-1)
  return pairs.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def as_int4_array(packed: Array) -> Array:
  """uint8 (..., K/2) -> a ``jnp.int4`` array (..., K) of the same codes.

  XLA's ``bitcast_convert_type`` to a 4-bit type puts byte j's low nibble
  at element 2j and its high nibble at 2j + 1, which is this module's
  layout, and XLA stores ``int4`` arrays two per byte in that order: the
  same bytes, only typed for kernels (Mosaic GPU) that take 4-bit arrays.

  >>> as_int4_array(pack_int4(jnp.array([[1, -2, -8, 7]], jnp.int8))).tolist()
  [[1, -2, -8, 7]]
  """
  _check_dtype("packed", packed, jnp.uint8)
  unpacked_shape(packed.shape)
  pairs = lax.bitcast_convert_type(packed, jnp.int4)  # (..., K/2, 2)
  return pairs.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _check_dtype(name: str, x, dtype) -> None:
  if getattr(x, "dtype", None) != jnp.dtype(dtype):
    raise ValueError(
      f"{name} has {describe(x)}; expected an array of {jnp.dtype(dtype)}"
    )
