"""Argument checks shared by the kernels and the library: one error style.

Every message names the argument, its shape and dtype, and what was
expected. Kernels take canonical 3-D arrays: codes ``(B, R, K)`` and f32
scales shaped like ``QTensor.scale``; ``lowprec_jax`` checks user input with
the same helpers.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from pallas_kernels import tiles

FLOAT_DTYPES = tuple(
  np.dtype(d) for d in (jnp.float32, jnp.bfloat16, np.float16)
)
FP8_DTYPES = tuple(np.dtype(d) for d in (jnp.float8_e4m3fn, jnp.float8_e5m2))
CODE_DTYPES = (np.dtype(np.int8), *FP8_DTYPES)
ROUNDINGS = ("nearest", "stochastic")


def describe(x) -> str:
  """'shape (2, 3) and dtype float32' for error messages."""
  shape = tuple(getattr(x, "shape", ()))
  return f"shape {shape} and dtype {getattr(x, 'dtype', type(x).__name__)}"


def check_float_array(name: str, x) -> None:
  """Raises ValueError unless ``x`` is a float32/bfloat16/float16 array."""
  dtype = getattr(x, "dtype", None)
  if dtype is None or np.dtype(dtype) not in FLOAT_DTYPES:
    raise ValueError(
      f"{name} has {describe(x)}; expected a float32, bfloat16 or float16 array"
    )


def check_array(name: str, x, dtypes, ndim: int = 3) -> None:
  """Raises ValueError unless ``x`` is an ``ndim``-D array of one of ``dtypes``."""
  dtype = getattr(x, "dtype", None)
  if dtype is None or np.dtype(dtype) not in dtypes or x.ndim != ndim:
    names = ", ".join(str(d) for d in dtypes)
    raise ValueError(
      f"{name} has {describe(x)}; expected a {ndim}-D array of {names}"
    )


def check_operands(
  a_q, b_q, dtypes, b_dtypes=None
) -> tuple[int, int, int, int]:
  """Checks K-major GEMM operands (B, M, K) and (B, N, K); returns BMNK.

  ``b_dtypes`` (default: ``dtypes``) when b takes other code dtypes.
  """
  check_array("a_q", a_q, dtypes)
  check_array("b_q", b_q, dtypes if b_dtypes is None else b_dtypes)
  (ba, m, k), (bb, n, kb) = a_q.shape, b_q.shape
  if ba != bb or k != kb:
    raise ValueError(
      f"a_q has shape {a_q.shape} and b_q has shape {b_q.shape}; expected "
      "(B, M, K) and (B, N, K) with the same B and K"
    )
  return ba, m, n, k


def check_scales(name: str, s, want: tuple[int, ...], what: str) -> None:
  """Raises ValueError unless ``s`` is float32 of shape ``want``."""
  check_array(name, s, (np.dtype(np.float32),), ndim=len(want))
  if tuple(s.shape) != tuple(want):
    raise ValueError(
      f"{name} has {describe(s)}; for {what} expected float32 of shape "
      f"{tuple(want)}"
    )


def check_operand_scales(a_q, a_s, a_tile, b_q, b_s, b_tile) -> None:
  """Raises ValueError unless ``a_s`` and ``b_s`` are float32 scale grids of
  codes ``a_q`` and ``b_q`` over their tiles (``tiles.scale_shape``)."""
  for name, q, s, tile in (
    ("a_s", a_q, a_s, a_tile),
    ("b_s", b_q, b_s, b_tile),
  ):
    check_scales(name, s, tiles.scale_shape(q.shape, tile), f"tile {tile!r}")


def check_out_dtype(out_dtype, name: str = "out_dtype") -> np.dtype:
  """The output dtype as np.dtype; ValueError unless f32, bf16 or f16."""
  try:
    dtype = np.dtype(out_dtype)
  except TypeError:
    dtype = None
  if dtype not in FLOAT_DTYPES:
    raise ValueError(
      f"{name} must be float32, bfloat16 or float16, got {out_dtype!r}"
    )
  return dtype


def check_rounding(rounding, name: str = "rounding") -> None:
  if rounding not in ROUNDINGS:
    raise ValueError(f"{name} must be one of {ROUNDINGS}, got {rounding!r}")


def as_seed(seed, name: str = "seed") -> Array:
  """An int in [0, 2^32), an integer scalar array (taken modulo 2^32: a
  traced value cannot be checked) or a PRNG key as a uint32 scalar."""
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    if not 0 <= int(seed) < 2**32:
      raise ValueError(
        f"{name}={int(seed)} is outside [0, 2**32): seeds are uint32 (pass "
        f"{name} % 2**32 to wrap it, or a jax.random key)"
      )
    return jnp.asarray(int(seed), jnp.uint32)
  dtype = getattr(seed, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    if seed.shape != ():
      raise ValueError(
        f"{name} must be a single PRNG key, got {describe(seed)}"
      )
    return jax.random.bits(seed, (), jnp.uint32)
  if dtype is not None and jnp.issubdtype(dtype, jnp.integer):
    if seed.shape != ():
      raise ValueError(f"{name} must be a scalar, got {describe(seed)}")
    return jnp.asarray(seed).astype(jnp.uint32)
  raise ValueError(
    f"{name} has {describe(seed)}; expected an int, an integer scalar array "
    "or a jax.random key"
  )


def seed_array(seed, rounding: str) -> Array | None:
  """The uint32 seed as a (1,) kernel input for stochastic rounding, else
  None (nearest rounding needs no seed)."""
  check_rounding(rounding)
  if rounding == "nearest":
    return None
  if seed is None:
    raise ValueError("rounding='stochastic' needs seed= (a uint32 scalar)")
  return as_seed(seed).reshape(1)
