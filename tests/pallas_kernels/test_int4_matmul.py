"""The INT4 GEMM kernels against their jnp twin, bit for bit.

One base (:class:`Int4MatmulTestBase`) for every implementation's
``int4_matmul``: each storage of each operand (int8 or packed INT4; K-major
or transposed) it supports, with S x S block scales and with per-tensor
scales, on ragged shapes (M, N, K not multiples of any program tile or of
S). Agreement must be exact: every implementation sums int8 products exactly
in int32 per K chunk (or over all of K for per-tensor scales) and rescales in
f32 in the same order (``pallas_kernels/int4_matmul.py``), so any difference
is a bug, not rounding.
"""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import int4_matmul as portable
from pallas_kernels import tiles
from pallas_kernels.int4 import pack_int4
from pallas_kernels.int4_matmul import Int4Operand, int4_matmul_reference
from pallas_kernels.mosaic import int4_matmul as mosaic
from tests.implementation_cases import ImplementationTestBase, cases, requires
from tests.pallas_kernels.kernel_support import (
  ON_GPU,
  race_detector,
  races_found,
)

B, M, N, K = 2, 40, 72, 96
STORAGES = list(
  itertools.product((False, True), repeat=2)
)  # packed, transposed
K_MAJOR = [(packed, False) for packed in (False, True)]
# (a, b) storages of the op's GEMMs: forward, dlhs, drhs, leverage drhs.
OP_LAYOUTS = [
  ((True, False), (True, False)),
  ((False, False), (True, True)),
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


def _operands(a: Int4Operand, b: Int4Operand, bmnk, seed: int):
  """Stored a and b; int8 operands take the bit split's range
  (|14 hi + lo| <= 105)."""
  batch, m, n, k = bmnk
  rng = np.random.default_rng(seed)
  a_args = _operand(
    rng, (batch, m, k), a, *(-8, 7) if a.packed else (-105, 105)
  )
  b_args = _operand(
    rng, (batch, n, k), b, *(-8, 7) if b.packed else (-105, 105)
  )
  return (*a_args, *b_args)


def _name(storage) -> str:
  packed, transposed = storage
  return ("int4" if packed else "int8") + ("T" if transposed else "")


def _named(triples) -> dict:
  """Test ids such as ``32x32-int4-int8T`` for (tile, a, b) triples."""
  return {
    f"{tiles.name(tile)}-{_name(a)}-{_name(b)}": (tile, a, b)
    for tile, a, b in triples
  }


def _pairs(storages, tile_list):
  return [
    (tile, a, b)
    for tile in tile_list
    for a, b in itertools.product(storages, repeat=2)
  ]


class Int4MatmulTestBase(ImplementationTestBase):
  """Tests of one implementation's ``int4_matmul`` (subclasses say which)."""

  kernel = None  # int4_matmul(a_q, a_s, b_q, b_s, *, a, b, out_dtype)
  # (tile, (packed, transposed) of a, of b): what it must get bit for bit.
  matching_cases: dict = {}
  # (tile, a storage, b storage) it must refuse with NotImplementedError.
  unsupported_cases: dict = {}
  bmnk = (B, M, N, K)
  race_shape: tuple | None = None  # run once under a race detector

  def _assert_matches(self, a: Int4Operand, b: Int4Operand, seed, **kw):
    args = _operands(a, b, self.bmnk, seed)
    out = type(self).kernel(*args, a=a, b=b, **kw)
    ref = int4_matmul_reference(*args, a=a, b=b)
    assert out.shape == self.bmnk[:3]
    if not ON_GPU:
      np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
      return
    # Compiled, the f32 promotion ``carry + P * s`` may fuse into an FMA:
    # each of the C promotions moves the sum by at most 2 roundings of a
    # magnitude <= S = sum_j |t_j| (bounded with |codes|), so
    # |out - ref| <= 2 C u S, u = 2^-24 (tests/pallas_kernels/
    # int8_matmul_base.py derives the same bound).
    a_q, a_s = a.materialized(*args[:2])
    b_q, b_s = b.materialized(*args[2:])
    plain_a, plain_b = Int4Operand(a.tile), Int4Operand(b.tile)
    magnitude = int4_matmul_reference(
      jnp.abs(a_q), a_s, jnp.abs(b_q), b_s, a=plain_a, b=plain_b
    )
    chunks = 1 if a.tile is None else -(-self.bmnk[3] // a.tile[0])
    np.testing.assert_array_less(
      np.abs(np.asarray(out) - np.asarray(ref)),
      2 * chunks * 2.0**-24 * np.asarray(magnitude) + 1e-30,
    )

  @cases("tile, a_storage, b_storage", "matching_cases")
  def test_same_bits_as_the_reference(self, tile, a_storage, b_storage):
    self._assert_matches(
      Int4Operand(tile, *a_storage), Int4Operand(tile, *b_storage), 0
    )

  @cases("tile, a_storage, b_storage", "unsupported_cases")
  def test_refuses_what_it_has_no_path_for(self, tile, a_storage, b_storage):
    a, b = Int4Operand(tile, *a_storage), Int4Operand(tile, *b_storage)
    args = _operands(a, b, (1, 8, 8, 64), 0)
    with pytest.raises(NotImplementedError, match="S in"):
      type(self).kernel(*args, a=a, b=b)

  def test_bad_input(self):
    int4_matmul = type(self).kernel
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

  @requires("race_shape", "no race detector")
  def test_no_races_in_the_unpacking(self):
    """Each warpgroup rewrites its unpacked SMEM slot every K step while
    ``wgmma`` reads it asynchronously: the interpreter's race detector
    checks the fence and waits between the two."""
    a = b = Int4Operand((32, 32), packed=True)
    args = _operands(a, b, self.race_shape, 3)
    out = type(self).kernel(*args, a=a, b=b, interpret=race_detector())
    np.testing.assert_array_equal(
      np.asarray(out), np.asarray(int4_matmul_reference(*args, a=a, b=b))
    )
    assert not races_found()


class TestPallasInt4Matmul(Int4MatmulTestBase):
  kernel = staticmethod(portable.int4_matmul)
  # Every storage with 32 x 32 blocks; the op's layouts with per-tensor
  # scales and 16 x 16 blocks (bf16 MMAs on exact integers).
  matching_cases = _named(
    _pairs(STORAGES, [(32, 32)])
    + [(tile, a, b) for tile in (None, (16, 16)) for a, b in OP_LAYOUTS]
  )


class TestMosaicInt4Matmul(Int4MatmulTestBase):
  """The Hopper kernel, in the Mosaic GPU interpreter without a GPU."""

  kernel = staticmethod(mosaic.int4_matmul)
  # K-major operands (what the kernel itself reads) with every scale tile it
  # takes; the op's transposed layouts (transposed by XLA before the
  # kernel) with blocks and per tensor. M, N, K span several CTA tiles and
  # K steps with ragged tails (K = 288: two 128-wide steps and a tail,
  # padded to a multiple of 128 for the packed operands' TMA tiles).
  bmnk = (2, 136, 200, 288)
  matching_cases = _named(
    _pairs(K_MAJOR, [(32, 32)])
    + [(None, a, b) for a, b in OP_LAYOUTS]
    + [(tile, (True, False), (True, False)) for tile in ((64, 64), (128, 128))]
    + [((32, 32), a, b) for a, b in OP_LAYOUTS[1:]]
  )
  unsupported_cases = _named([((16, 16), (True, False), (True, False))])
  race_shape = None if ON_GPU else (1, 64, 64, 256)
