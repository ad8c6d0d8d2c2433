"""The INT4 GEMM kernel against its jnp twin, bit for bit.

Every storage of each operand (int8 or packed INT4; K-major or transposed)
with S x S block scales, and the layouts the INT4 op uses with per-tensor
scales, on a ragged shape (M, N, K not multiples of the 64 x 64 program
tile or of S = 32). Agreement must be exact: both sum int8 products exactly
in int32 per K chunk and rescale in f32 in the same order
(``pallas_kernels/int4_matmul.py``).
"""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import tiles
from pallas_kernels.int4 import pack_int4
from pallas_kernels.int4_matmul import (
  Int4Operand,
  int4_matmul,
  int4_matmul_reference,
)

B, M, N, K = 2, 40, 72, 96
STORAGES = list(
  itertools.product((False, True), repeat=2)
)  # packed, transposed
# (a, b) storages of the op's GEMMs: forward, dlhs, drhs, leverage drhs.
OP_LAYOUTS = [
  ((True, False), (True, False)),
  ((False, False), (True, True)),
  ((False, True), (True, True)),
  ((False, True), (True, True)),
]


def _operand(rng, shape, op: Int4Operand, low=-8, high=7):
  """Stored (codes, scales) of random logical (B, R, K) codes."""
  codes = rng.integers(low, high + 1, shape).astype(np.int8)
  scale = rng.uniform(0.5, 2.0, tiles.scale_shape(shape, op.tile))
  scale = scale.astype(np.float32)
  if op.transposed:
    codes, scale = codes.transpose(0, 2, 1), scale.transpose(0, 2, 1)
  codes = jnp.asarray(codes)
  return (pack_int4(codes) if op.packed else codes), jnp.asarray(scale)


def _assert_matches(a: Int4Operand, b: Int4Operand, seed: int):
  rng = np.random.default_rng(seed)
  # int8 operands take the bit split's range (|14 hi + lo| <= 105).
  a_args = _operand(rng, (B, M, K), a, *((-8, 7) if a.packed else (-105, 105)))
  b_args = _operand(rng, (B, N, K), b, *((-8, 7) if b.packed else (-105, 105)))
  out = int4_matmul(*a_args, *b_args, a=a, b=b)
  ref = int4_matmul_reference(*a_args, *b_args, a=a, b=b)
  assert out.shape == (B, M, N)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


@pytest.mark.parametrize("a_storage", STORAGES, ids=str)
@pytest.mark.parametrize("b_storage", STORAGES, ids=str)
def test_every_storage_with_blocks(a_storage, b_storage):
  tile = (32, 32)
  _assert_matches(
    Int4Operand(tile, *a_storage), Int4Operand(tile, *b_storage), 0
  )


@pytest.mark.parametrize("a_storage, b_storage", OP_LAYOUTS, ids=str)
@pytest.mark.parametrize("tile", [None, (16, 16)], ids=str)
def test_op_layouts(tile, a_storage, b_storage):
  """Per-tensor scales, and 16 x 16 blocks (bf16 MMAs on exact integers)."""
  _assert_matches(
    Int4Operand(tile, *a_storage), Int4Operand(tile, *b_storage), 1
  )


def test_bad_input():
  a, b = Int4Operand(), Int4Operand(packed=True)
  q = jnp.zeros((1, 8, 16), jnp.int8)
  s = jnp.ones((1, 1, 1), jnp.float32)
  with pytest.raises(
    ValueError, match="b_q has shape .* expected a 3-D array of uint8"
  ):
    int4_matmul(q, s, q, s, a=a, b=b)
  with pytest.raises(ValueError, match="same B and K"):
    int4_matmul(q, s, jnp.zeros((1, 8, 16), jnp.uint8), s, a=a, b=b)
  with pytest.raises(ValueError, match="a_s has shape \\(1, 1, 1\\)"):
    blocks, wide = Int4Operand((32, 32)), jnp.zeros((1, 64, 64), jnp.int8)
    int4_matmul(wide, s, wide, s, a=blocks, b=blocks)
  eight, q8 = Int4Operand((8, 8)), jnp.zeros((1, 8, 8), jnp.int8)
  with pytest.raises(NotImplementedError, match="S in"):
    int4_matmul(q8, s, q8, s, a=eight, b=eight)
  with pytest.raises(NotImplementedError, match="block sizes differ"):
    int4_matmul(q, s, q, s, a=Int4Operand((16, 16)), b=Int4Operand((32, 32)))
