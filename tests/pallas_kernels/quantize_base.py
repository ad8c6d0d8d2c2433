"""Quantize and dequantize kernels: the same bits as lowprec_jax.formats.

The tests of every implementation's ``quantize_int8_block``, ``quantize_fp8``
and ``dequantize``; ``test_quantize.py`` subclasses :class:`QuantizeTestBase`.

Every comparison is exact: the kernels, their plain-jnp twins
(``pallas_kernels.quantize.*_reference``) and the library's
``formats.quantize`` (under ``jit``, as the library runs it) must produce
identical codes and scales, for round-to-nearest and stochastic rounding,
aligned and ragged shapes, B = 1 and B > 1, and the special values (all-zero
tiles, NaN and inf poisoning, huge and tiny magnitudes, -0.0). Twin and
library take the correctly rounded reciprocal (``numerics.reciprocal_rn``),
never a GPU's approximate ``div.full.f32``; each failure names the reference
it broke, so on the H200 a failure against the library alone points at the
library (XLA's ``1 / scale``), not at the kernels.
"""

import functools
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lowprec_jax.formats import Fp8, Int8Block, QTensor, quantize
from pallas_kernels import numerics, tiles
from pallas_kernels import quantize as twin
from tests.helpers import normal, raises
from tests.implementation_cases import ImplementationTestBase, cases, requires
from tests.pallas_kernels.kernel_support import (
  E4M3,
  FP8_NAMES,
  assert_bitwise,
  bits,
  finished,
  race_detector,
  races_found,
)

FP8_SEED = 2**31 + 5  # stochastic rounding of the FP8 cases


class Fp8Case(NamedTuple):
  """One ``quantize_fp8`` call: x of ``shape`` (B, M, K) as ``x_dtype``."""

  tile: tuple | None
  dtype: type
  rounding: str
  shape: tuple[int, int, int]
  x_dtype: type = jnp.float32
  specials: bool = False  # with_specials(x)


class DequantizeCase(NamedTuple):
  """Codes of ``codes`` (an FP8 dtype, or "int8" for S x S INT8 blocks)
  over ``tile``, quantized from x of ``shape`` by the twin."""

  codes: object
  tile: tuple | None
  rounding: str
  shape: tuple[int, int, int]
  out_dtypes: tuple = (jnp.float32,)


@functools.partial(jax.jit, static_argnames=("fmt", "rounding"))
def _library(x, seed, *, fmt, rounding):
  qt = quantize(x, fmt, rounding=rounding, seed=seed)
  return qt.qvalue, qt.scale


def with_specials(x):
  """A NaN, an inf, an all-zero block, a huge and a tiny block."""
  x = x.at[0, 0, 0].set(jnp.nan).at[0, -1, -1].set(jnp.inf)
  x = x.at[0, 32:64, 32:64].set(0.0).at[0, 32:64, 0:32].mul(1e37)
  return x.at[-1, :32, 32:64].mul(1e-42)


def special_values(shape):
  """Tiles that are all zero, hold NaN or inf, huge, tiny, or -0.0 (batch 0;
  the slices clip for shapes under 96 x 80)."""
  x = np.array(normal(shape, seed=1))
  x[0, :32, :32] = 0.0
  x[0, 1, 40] = np.nan
  x[0, 40, 1] = -np.inf
  x[0, 33:64, 33:40] = np.finfo(np.float32).max * 0.75
  x[0, 33:64, 40:64] = -np.finfo(np.float32).max
  x[0, 64:, :32] = 1e-40 * 3  # below qmax * 2^-126 (and subnormal)
  x[0, 64:, 32:] = 3e-38
  x[0, 0, 0] = -0.0
  return jnp.asarray(x)


def fp8_case_table(rows, **common) -> dict[str, Fp8Case]:
  """{id: Fp8Case} from (tile, dtype, rounding, ...) rows; ids such as
  ``1x128-e4m3-nearest``."""
  table = {}
  for row in rows:
    case = Fp8Case(*row, **common)
    key = f"{tiles.name(case.tile)}-{FP8_NAMES[np.dtype(case.dtype)]}-"
    key += case.rounding + ("-bf16" if case.x_dtype == jnp.bfloat16 else "")
    table[key] = case
  return table


def _fp8_format(dtype, tile) -> Fp8:
  return Fp8(FP8_NAMES[np.dtype(dtype)], tile)


class QuantizeTestBase(ImplementationTestBase):
  """Tests of one implementation's quantize/dequantize kernels.

  Subclasses set the implementation's module and interpret mode, its
  shapes, and the cases it runs (see the attributes below; an empty table
  skips that test for the implementation).
  """

  kernels: types.ModuleType  # quantize_int8_block, quantize_fp8, dequantize
  interpret = None  # passed to every kernel call
  aligned: tuple[int, int, int]  # (B, M, K) of the INT8 sweep
  ragged: tuple[int, int, int]
  sweep_with_special_values = False  # with_specials(x) in the INT8 sweep
  sr_seeds: tuple[int, ...]  # stochastic-rounding seeds of the INT8 sweep
  noise_seeds: tuple[int, ...] = ()  # two seeds: only the noise may differ
  half_precision_inputs: tuple = ()  # x dtypes of an INT8 block-64 case
  int8_special_roundings: tuple[str, ...] = ()
  fp8_cases: dict[str, Fp8Case]
  fp8_special_cases: dict[str, Fp8Case]
  dequantize_cases: dict[str, DequantizeCase]
  # FP8 requantization, id -> (shape, in_tile, tile, dtype, rounding)
  requantize_cases: dict[str, tuple] = {}
  # One read, two FP8 tiles: id -> (shape, x dtype, row tile, column tile)
  dual_cases: dict[str, tuple] = {}
  # (function name, tile, message) of tiles without a kernel
  unsupported_tiles: tuple[tuple[str, tuple, str], ...] = ()
  detects_races = False  # runs in an interpreter with a race detector
  corrects_reciprocal = False  # 1 / scale from div.full, corrected to RN

  def _run(self, name, *args, **kw):
    kw.setdefault("interpret", self.interpret)
    return finished(getattr(self.kernels, name)(*args, **kw))

  def check_int8(self, x, block, rounding, seed, transpose=True):
    kw = dict(block=block, rounding=rounding, seed=seed)
    got = self._run("quantize_int8_block", x, transpose=transpose, **kw)
    assert len(got) == (4 if transpose else 2)
    twins = twin.quantize_int8_block_reference(x, transpose=transpose, **kw)
    for g, t in zip(got, twins):
      assert_bitwise(g, t, "kernel vs twin")
    lib_seed = jnp.uint32(0 if seed is None else seed)
    want = _library(x, lib_seed, fmt=Int8Block(block), rounding=rounding)
    for i, w in enumerate(want):
      assert_bitwise(got[i], w, "kernel vs formats.quantize")
      if transpose:  # the transposed copy is the same quantization
        assert_bitwise(got[i + 2], np.swapaxes(w, 1, 2), "transposed copy")
    assert int(np.min(np.asarray(got[0]))) >= -127
    return got

  def check_fp8(self, x, tile, dtype, rounding, seed):
    """Also checks the transposed copy where the kernel writes one."""
    kw = dict(dtype=dtype, tile=tile, rounding=rounding, seed=seed)
    transpose = self.kernels.unsupported_transpose_reason(tile) is None
    got = self._run("quantize_fp8", x, transpose=transpose, **kw)
    assert len(got) == (4 if transpose else 2)
    fmt = _fp8_format(dtype, tile)
    lib_seed = jnp.uint32(0 if seed is None else seed)
    want = _library(x, lib_seed, fmt=fmt, rounding=rounding)
    for i, (t, w) in enumerate(zip(twin.quantize_fp8_reference(x, **kw), want)):
      assert_bitwise(got[i], t, "kernel vs twin")
      assert_bitwise(got[i], w, "kernel vs formats.quantize")
      if transpose:  # the transposed copy is the same quantization
        assert_bitwise(got[i + 2], np.swapaxes(w, 1, 2), "transposed copy")
    return got[:2]

  @pytest.mark.parametrize("shape", ["aligned", "ragged"])
  @pytest.mark.parametrize("block", [32, 128])
  @pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
  def test_int8_block_with_transpose(self, shape, block, rounding):
    x = normal(getattr(self, shape), seed=block) * 3
    if self.sweep_with_special_values:
      x = with_specials(x)
    for seed in self.sr_seeds if rounding == "stochastic" else [None]:
      self.check_int8(x, block, rounding, seed)

  @requires("noise_seeds", "runs no pair of seeds")
  def test_int8_block_seeds_change_only_the_noise(self):
    x = normal(self.ragged, seed=5)
    q1, q2 = (
      self.check_int8(x, 32, "stochastic", s)[0] for s in self.noise_seeds
    )
    diff = np.abs(np.asarray(q1, np.int32) - np.asarray(q2, np.int32))
    assert diff.max() == 1 and 0.2 < np.mean(diff) < 0.8

  @cases("dtype", "half_precision_inputs")
  def test_int8_block_half_precision_inputs(self, dtype):
    x = normal((3, 40, 96), dtype, seed=3)
    self.check_int8(x, 64, "stochastic", 9, transpose=False)

  @cases("case", "fp8_cases")
  def test_fp8_matches_twin_and_formats(self, case):
    x = (normal(case.shape, seed=7) * 50).astype(case.x_dtype)
    if case.specials:
      x = with_specials(x)
    seed = FP8_SEED if case.rounding == "stochastic" else None
    self.check_fp8(x, case.tile, case.dtype, case.rounding, seed)

  @cases("case", "requantize_cases")
  def test_requantize_is_dequantize_then_quantize(self, case):
    """One kernel, the bits of formats.dequantize then formats.quantize
    (NaN/inf groups of the input poison their output groups too)."""
    shape, in_tile, tile, dtype, rounding = case
    src = quantize(
      with_specials(normal(shape, seed=11) * 40), Fp8("e4m3", in_tile)
    )
    seed = FP8_SEED if rounding == "stochastic" else None
    got = self._run(
      "requantize_fp8",
      src.qvalue,
      src.scale,
      in_tile=in_tile,
      dtype=dtype,
      tile=tile,
      rounding=rounding,
      seed=seed,
    )
    lib_seed = jnp.uint32(0 if seed is None else seed)
    high = src.dequantize(jnp.float32)
    fmt = _fp8_format(dtype, tile)
    want = _library(high, lib_seed, fmt=fmt, rounding=rounding)
    for g, w in zip(got, want, strict=True):
      assert_bitwise(g, w, "kernel vs formats.dequantize + quantize")

  @cases("case", "dual_cases")
  def test_dual_is_two_quantizations(self, case):
    """One kernel, the bits of formats.quantize to each tile (NaN and inf
    poison their row group and their column group)."""
    shape, x_dtype, row_tile, column_tile = case
    x = with_specials(normal(shape, seed=12) * 40).astype(x_dtype)
    kw = dict(dtype=E4M3, row_tile=row_tile, column_tile=column_tile)
    got = self._run("quantize_fp8_dual", x, **kw)
    lib_seed = jnp.uint32(0)
    for (q, s), tile in zip(got, (row_tile, column_tile), strict=True):
      fmt = _fp8_format(E4M3, tile)
      want = _library(x, lib_seed, fmt=fmt, rounding="nearest")
      assert_bitwise(q, want[0], f"{tile} codes vs formats.quantize")
      assert_bitwise(s, want[1], f"{tile} scales vs formats.quantize")

  @cases("rounding", "int8_special_roundings")
  def test_int8_special_values(self, rounding):
    x = special_values((1, 96, 80))
    seed = 3 if rounding == "stochastic" else None
    q, s, _, _ = self.check_int8(x, 32, rounding, seed)
    s = np.asarray(s)
    assert s[0, 0, 0] == 1.0 and np.isnan(s[0, 0, 1]) and np.isnan(s[0, 1, 0])
    assert np.all(np.asarray(q)[0, :32, 32:64] == 0)  # the NaN tile
    assert np.isfinite(s[0, 1, 1])  # huge but finite values
    assert s[0, 2, 0] == 1.0 and s[0, 2, 1] == 2.0**-126  # flushed, floored

  @cases("case", "fp8_special_cases")
  def test_fp8_special_values(self, case):
    x = special_values(case.shape)
    seed = 4 if case.rounding == "stochastic" else None
    q, s = self.check_fp8(x, case.tile, case.dtype, case.rounding, seed)
    if case.tile is None:  # one NaN poisons the whole tensor
      assert np.isnan(s).all() and not np.asarray(q, np.float32).any()

  @cases("case", "dequantize_cases")
  def test_dequantize_matches_twin_and_formats(self, case):
    x = normal(case.shape, seed=7) * 50
    if case.codes == "int8":
      block = case.tile[0]
      q, s = twin.quantize_int8_block_reference(x, block=block)
      fmt = Int8Block(block)
    else:
      seed = FP8_SEED if case.rounding == "stochastic" else None
      q, s = twin.quantize_fp8_reference(
        x, dtype=case.codes, tile=case.tile, rounding=case.rounding, seed=seed
      )
      fmt = _fp8_format(case.codes, case.tile)
    for dtype in case.out_dtypes:
      got = self._run("dequantize", q, s, tile=case.tile, out_dtype=dtype)
      want = twin.dequantize_reference(q, s, tile=case.tile, out_dtype=dtype)
      assert_bitwise(got, want, "kernel vs twin")
      want = QTensor(q, s, fmt).dequantize(dtype)
      assert_bitwise(got, want, "kernel vs QTensor.dequantize")

  def test_bad_arguments_raise_with_names(self):
    Q, x = self.kernels, jnp.ones((2, 8, 8))
    with raises(r"x has shape \(8, 8\) and dtype float32; expected a 3-D"):
      Q.quantize_int8_block(x[0], block=32)
    with raises(r"x has shape \(2, 8, 8\) and dtype int32"):
      Q.quantize_int8_block(x.astype(jnp.int32), block=32)
    for block in (16, 48):
      with raises("block must be one of"):
        Q.quantize_int8_block(x, block=block)
    with raises("needs seed="):
      Q.quantize_int8_block(x, block=32, rounding="stochastic")
    with raises("rounding must be"):
      Q.quantize_fp8(x, dtype=E4M3, tile=None, rounding="down")
    with raises("dtype must be float8_e4m3fn or float8_e5m2"):
      Q.quantize_fp8(x, dtype=jnp.int8, tile=None)
    with raises(
      r"tile \(None, 1\) has no quantize kernel", NotImplementedError
    ):
      Q.quantize_fp8(x, dtype=E4M3, tile=(None, 1))
    with raises(
      r"s has shape \(2, 8, 1\).*expected float32 of shape \(2, 1, 1\)"
    ):
      q = jnp.zeros((2, 8, 8), E4M3)
      Q.dequantize(q, jnp.ones((2, 8, 1)), tile=(32, 32))
    for name, tile, match in self.unsupported_tiles:
      with raises(match, NotImplementedError):
        if name == "dequantize":
          s = jnp.ones((1, 8, 1), jnp.float32)
          Q.dequantize(jnp.zeros((1, 8, 8), E4M3), s, tile=tile)
        else:
          getattr(Q, name)(jnp.zeros((1, 8, 8)), dtype=E4M3, tile=tile)

  @requires("corrects_reciprocal", "takes the correctly rounded reciprocal")
  def test_corrected_reciprocal_is_round_to_nearest(self):
    """From 1/d moved by up to 2 ulp (div.full's bound) back to RN(1/d), on
    random scales, powers of two and their predecessors (binade edges)."""
    rand = np.random.default_rng(0).integers(1 << 23, 0x7E800000, 20000)
    pow2 = (2.0 ** np.arange(-125, 126, dtype=np.float64)).astype(np.float32)
    below = np.nextafter(pow2, np.float32(0))
    d = jnp.asarray(
      np.concatenate([rand.astype(np.uint32).view(np.float32), pow2, below])
    )
    want = bits(jax.jit(numerics.reciprocal_rn)(d))
    for offset in (-2, -1, 0, 1, 2):
      r = lax.bitcast_convert_type(
        lax.bitcast_convert_type(1.0 / d, jnp.int32) + offset, jnp.float32
      )
      got = jax.jit(numerics.corrected_reciprocal)(d, r)
      assert_bitwise(bits(got), want)

  @requires("detects_races", "no race detector")
  def test_no_races_with_transpose(self):
    x = normal((1, 64, 128), seed=2)
    kw = dict(block=32, rounding="stochastic", seed=1, transpose=True)
    self._run("quantize_int8_block", x, **kw, interpret=race_detector())
    assert not races_found()

  @requires("detects_races", "no race detector")
  def test_no_races_in_group_kernels(self):
    """The column reduction shares SMEM scratch across warps; the row scales
    go out of an SMEM row written by replicated lanes."""
    x = normal((1, 128, 128), seed=3)
    kw = dict(dtype=E4M3, rounding="stochastic", seed=1)
    for tile in [(128, 1), (1, 128)]:
      self._run("quantize_fp8", x, tile=tile, **kw, interpret=race_detector())
      assert not races_found(), tile
