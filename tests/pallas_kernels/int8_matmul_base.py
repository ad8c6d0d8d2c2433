"""Block-scaled INT8 GEMM kernels against their twin, "xla" and float64.

The tests of every implementation's ``int8_block_matmul``;
``test_int8_matmul.py`` subclasses :class:`Int8MatmulTestBase`.
``out = sum_j float(P_j) * (sa_j * sb_j)`` over the K blocks j, with ``P_j``
the int8 x int8 -> int32 dot of block j.

Exact cases: codes in [-5, 5] and scales 2^e (``exact_scale_exponents``):
every block sum is an integer and every scaled term and partial sum a
multiple of 2^-2E that f32 holds exactly, so every implementation must equal
the float64 product bit for bit, in any order of the same operations.

General cases (codes over [-127, 127], log-normal scales). P_j is exact
(|P_j| < 2^21). An implementation that adds the same f32 terms
``float(P_j) * (sa * sb)`` in the same order as the ``"xla"`` implementation
and the twin, on the same compiler, agrees with both bit for bit
(``same_bits_as_xla``: the Pallas kernel, and the Hopper kernel in the
interpreter). Against float64 each term then carries two roundings (2u
relative) and the sum over nK blocks adds at most (nK - 1) u sum_j |t_j|, so
|out - exact| <= (nK + 2) u sum_j |t_j| with u = 2^-24. Any implementation
(the Hopper kernel compiled, too, where the GPU may fuse the last multiply
and add: one rounding fewer) keeps the exact int32 partial sums and moves
the running sum, at each of the C = nK promotions, by at most 2 roundings of
magnitude <= S = sum_j |t_j|: |out - xla| <= 2 C u S.
"""

import functools
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.shapes import shape
from lowprec_jax.formats import Int8Block, quantize
from pallas_kernels import int8_matmul as twin
from tests.helpers import raises
from tests.implementation_cases import ImplementationTestBase, cases, requires
from tests.pallas_kernels.kernel_support import (
  U,
  assert_same,
  cdiv,
  finished,
  int8_operands,
  race_detector,
  races_found,
  within,
  xla_int8,
)


class Int8OutCase(NamedTuple):
  """The INT8-out epilogue: ``out_block`` x ``out_block`` output blocks."""

  bmnk: tuple[int, int, int, int]
  block: int
  out_block: int
  rounding: str
  exact: bool  # operands (else general ones)
  seeds: tuple = (None,)


def block_terms(a_q, a_s, b_q, b_s, block):
  """float64 (exact product, sum_j |t_j|) of the block-scaled GEMM."""
  k = a_q.shape[2]
  out = abs_sum = 0.0
  for j in range(cdiv(k, block)):
    cols = slice(j * block, (j + 1) * block)
    qa = np.asarray(a_q[:, :, cols], np.float64)
    qb = np.asarray(b_q[:, :, cols], np.float64)
    sa = np.repeat(np.asarray(a_s[:, :, j], np.float64), block, 1)
    sb = np.repeat(np.asarray(b_s[:, :, j], np.float64), block, 1)
    t = np.einsum("bmk,bnk->bmn", qa, qb)
    t = t * sa[:, : qa.shape[1], None] * sb[:, None, : qb.shape[1]]
    out, abs_sum = out + t, abs_sum + np.abs(t)
  return out, abs_sum


@functools.partial(jax.jit, static_argnames=("block", "rounding"))
def _library_quantize(x, seed, *, block, rounding):
  qt = quantize(x, Int8Block(block), rounding=rounding, seed=seed)
  return qt.qvalue, qt.scale


_INT8_OUT_STATIC = ("kernel", "block", "out_block", "out_rounding", "interpret")


@functools.partial(jax.jit, static_argnames=_INT8_OUT_STATIC)
def _int8_out(a_q, a_s, b_q, b_s, seed, *, kernel, **kw):
  return kernel(a_q, a_s, b_q, b_s, seed=seed, **kw)


class Int8MatmulTestBase(ImplementationTestBase):
  """Tests of one implementation's ``int8_block_matmul`` (module doc).

  Shapes are (B, M, N, K); an empty case table skips that test.
  """

  kernels: types.ModuleType  # int8_block_matmul (jetfire_* helpers)
  interpret = None  # passed to every kernel call
  exact_cases: dict[str, tuple]  # id -> (bmnk, block)
  general_cases: dict[str, tuple]  # id -> (bmnk, block)
  same_bits_as_xla: bool
  bf16_case: tuple  # (bmnk, block, exact)
  int8_out_cases: dict[str, Int8OutCase]
  nan_shape: tuple[int, int, int, int]
  error_shape = shape("tiny_aligned").bmnk
  unsupported_out_blocks: tuple[int, ...] = ()
  has_jetfire_helpers = False
  race_shape: tuple[int, int, int, int] | None = None  # race detector runs

  def _run(self, *ops, **kw):
    kw.setdefault("interpret", self.interpret)
    return finished(self.kernels.int8_block_matmul(*ops, **kw))

  def _run_int8_out(self, *ops_and_seed, **kw):
    kw.setdefault("interpret", self.interpret)
    kernel = self.kernels.int8_block_matmul
    return finished(_int8_out(*ops_and_seed, kernel=kernel, **kw))

  def _product(self, bmnk, block, *, exact):
    """(kernel, "xla", twin, float64 product, sum_j |t_j|) on new operands."""
    ops = int8_operands(bmnk, block, exact=exact, seed=0)
    got = self._run(*ops, block=block)
    assert got.shape == bmnk[:3] and got.dtype == jnp.float32
    twin_out = twin.int8_block_matmul_reference(*ops, block=block)
    return got, xla_int8(*ops, block), twin_out, *block_terms(*ops, block)

  @cases("bmnk, block", "exact_cases")
  def test_exact_with_small_integers(self, bmnk, block):
    got, xla, twin_out, want, _ = self._product(bmnk, block, exact=True)
    assert_same(got, want.astype(np.float32), "kernel vs float64")
    assert_same(got, xla, "kernel vs xla")
    assert_same(got, twin_out, "kernel vs twin")

  @cases("bmnk, block", "general_cases")
  def test_general_data_within_budget(self, bmnk, block):
    got, xla, twin_out, want, abs_sum = self._product(bmnk, block, exact=False)
    n_blocks = cdiv(bmnk[3], block)
    assert within(got, xla, 2 * n_blocks * U * abs_sum)
    if self.same_bits_as_xla:
      assert_same(got, xla, "kernel vs xla")
      assert_same(got, twin_out, "kernel vs twin")
      assert within(got, want, (n_blocks + 2) * U * abs_sum)

  def test_bf16_output_is_the_rounded_f32_result(self):
    # The epilogue rounds the f32 result once, as "xla" does.
    bmnk, block, exact = self.bf16_case
    ops = int8_operands(bmnk, block, exact=exact, seed=3)
    got = self._run(*ops, block=block, out_dtype=jnp.bfloat16)
    assert got.dtype == jnp.bfloat16
    assert_same(got, xla_int8(*ops, block).astype(jnp.bfloat16))

  @cases("case", "int8_out_cases")
  def test_int8_out_epilogue_matches_twin_and_formats(self, case):
    """The INT8 output equals quantizing the f32 product with the library
    (and the twin), codes and scales, bit for bit.

    Row 31 of a is all 127: the maxima of the first blocks sit in a block's
    last row. With block 32 a NaN operand scale poisons the last 32 rows of
    a: their output blocks get scale NaN and codes 0. Exact operands (here
    with scales in {1/2, 1, 2}) make the f32 product exact on a GPU too
    (multiples of 1/4 below 127 * 5 * 4 * K <= 2^22 for K <= 512), so its
    requantization (absmax, scale, exact reciprocal, RTN or SR at the output
    coordinates) must give the same bits; general operands need an
    implementation with ``same_bits_as_xla``.
    """
    (b, m, n, _), block, ob = case.bmnk, case.block, case.out_block
    e = 1 if case.exact else None
    a_q, a_s, b_q, b_s = int8_operands(
      case.bmnk, block, exact=case.exact, seed=1, scale_exponents=e
    )
    a_q = a_q.at[:, 31, :].set(127)
    if block == 32:
      a_s = a_s.at[-1, -1, 0].set(jnp.nan)
    args = (a_q, a_s, b_q, b_s)
    f32 = xla_int8(*args, block)
    kw = dict(block=block, out_block=ob, out_rounding=case.rounding)
    for seed in case.seeds:
      lib_seed = jnp.uint32(seed or 0)
      seed = None if seed is None else jnp.uint32(seed)
      got = self._run_int8_out(*args, seed, **kw)
      want = _library_quantize(f32, lib_seed, block=ob, rounding=case.rounding)
      twin_out = twin.int8_block_matmul_reference(*args, seed=seed, **kw)
      for g, w, t in zip(got, want, twin_out):
        assert_same(g, w, "kernel vs formats.quantize")
        assert_same(g, t, "kernel vs twin")
      q, s = np.asarray(got[0]), np.asarray(got[1])
      assert q.dtype == np.int8 and s.shape == (b, cdiv(m, ob), cdiv(n, ob))
      if block == 32:
        first = (m - 1) // 32 * 32  # the poisoned rows of a: first..m
        assert np.isnan(s[-1, first // ob :]).all()
        assert not q[-1, first:].any()
        assert np.isfinite(s[-1, : first // ob]).all()
        assert np.isfinite(s[:-1]).all()

  def test_nan_scale_poisons_its_rows(self):
    # A NaN block scale (a tile that held NaN/inf) must reach the output.
    a_q, a_s, b_q, b_s = int8_operands(self.nan_shape, 32, exact=True, seed=4)
    a_s = a_s.at[-1, 1, 0].set(jnp.nan)  # rows 32..63 of the last batch
    out = np.asarray(self._run(a_q, a_s, b_q, b_s, block=32))
    assert np.isnan(out[-1, 32:64]).all()
    assert not np.isnan(out[-1, :32]).any()
    assert not np.isnan(out[-1, 64:]).any()
    assert not np.isnan(out[:-1]).any()

  @requires("has_jetfire_helpers", "has no jetfire_* helpers")
  def test_jetfire_helpers_are_the_three_variants(self):
    ops = int8_operands(shape("tiny_ragged").bmnk, 32, exact=False, seed=2)
    kw = dict(block=32, interpret=self.interpret)
    fwd = self.kernels.jetfire_forward(*ops, **kw)
    dgrad = self.kernels.jetfire_dgrad(*ops, seed=5, **kw)
    wgrad = self.kernels.jetfire_wgrad(*ops, **kw)
    f32 = xla_int8(*ops, 32)
    want = [
      _library_quantize(f32, jnp.uint32(seed), block=32, rounding=rounding)
      for seed, rounding in ((0, "nearest"), (5, "stochastic"))
    ]
    for got, w in zip((*fwd, *dgrad), (*want[0], *want[1])):
      np.testing.assert_array_equal(got, w)
    np.testing.assert_array_equal(wgrad, f32)

  def test_bad_arguments_raise_with_names(self):
    a_q, a_s, b_q, b_s = int8_operands(self.error_shape, 32, exact=True, seed=5)
    call = functools.partial(
      self.kernels.int8_block_matmul, block=32, interpret=self.interpret
    )
    with raises(
      r"a_q has shape \(1, 64, 128\) and b_q has shape \(1, 64, 64\)"
    ):
      call(a_q, a_s, b_q[:, :, :64], b_s)
    with raises(
      r"b_s has shape \(1, 2, 3\).*expected float32 of shape \(1, 2, 4\)"
    ):
      call(a_q, a_s, b_q, b_s[:, :, :3])
    with raises(r"a_s has shape \(1, 2, 3\)"):
      call(a_q, a_s[:, :, :3], b_q, b_s)
    for block in (16, 48):
      with raises("block must be one of"):
        call(a_q, a_s, b_q, b_s, block=block)
    with raises(r"a_q has shape \(1, 64, 128\) and dtype float32"):
      call(a_q.astype(jnp.float32), a_s, b_q, b_s)
    with raises("b_q has shape"):
      call(a_q, a_s, b_q.astype(jnp.float32), b_s)
    with raises("needs seed="):
      call(a_q, a_s, b_q, b_s, out_block=32, out_rounding="stochastic")
    for out_block in self.unsupported_out_blocks:
      with raises(f"out_block={out_block}", NotImplementedError):
        call(a_q, a_s, b_q, b_s, out_block=out_block)

  @requires("race_shape", "no race detector")
  def test_no_races_in_the_pipeline(self):
    ops = int8_operands(self.race_shape, 32, exact=True, seed=6)
    got = self._run(*ops, block=32, interpret=race_detector())
    assert_same(got, xla_int8(*ops, 32))
    assert not races_found()

  @requires("race_shape", "no race detector")
  def test_no_races_in_the_int8_out_epilogue(self):
    # The fp32 tile and the row maxima go through SMEM between lanes.
    ops = int8_operands(self.race_shape, 32, exact=True, seed=7)
    kw = dict(block=32, out_block=32, out_rounding="stochastic")
    self._run_int8_out(*ops, jnp.uint32(1), **kw, interpret=race_detector())
    assert not races_found()
