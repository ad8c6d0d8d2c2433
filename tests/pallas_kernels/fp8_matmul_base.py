"""Scaled FP8 GEMM kernels against their twin, "xla" and float64.

The tests of every implementation's ``fp8_matmul``; ``test_fp8_matmul.py``
subclasses :class:`Fp8MatmulTestBase`. a and b are E4M3 or E5M2 (b is
E5M2 in the weight gradient of a stored (K, N) weight, x^T . g^T).

Exact cases: codes in [-5, 5] (exact in E4M3 and E5M2) and scales 2^e
(``exact_scale_exponents``): every partial sum is a multiple of 2^-2E that
f32 holds exactly, so every implementation must equal the float64 product
bit for bit. The partial sums of codes stay integers below 25 K <= 2^14 for
the K <= 512 of these cases: exact even in Hopper's FP8 accumulator, which
keeps about 14 bits (DeepSeek-V3, sec. 3.3.2).

General cases, two budgets (``fp8_budget``):

* ``"float64"`` (every finite FP8 code, log-normal scales): products of two
  FP8 values are exact in f32, so implementations differ only in the order
  of the f32 sums. Each sums K exact products (at most (K - 1) u sum|terms|
  of rounding) and applies two scale multiplications (2u), so each is within
  (K + 2) u sum_k |a_k b_k sa sb| of the float64 product (u = 2^-24).
* ``"chunks"`` (normal data quantized by the library). Interpreted, the
  kernel's f32 matmul sums each chunk of c terms (c = K per tensor or row,
  the group size with promotion) in another order than XLA's dot, so with
  |terms| summing to S the two differ by at most 2 c u S. Compiled on a GPU,
  Hopper's FP8 wgmma keeps ~14 bits in its accumulator, a relative error up
  to ~2^-14 per 32-wide k-step; over n steps of a random-sign sum that grows
  like sqrt(n) 2^-14 relative to the partial sums, which can exceed the
  result by sqrt(n). Per-tensor: n = K/32 = 128 steps, 128 * 2^-14 = 2^-7;
  1x128 blocks promote every 4 steps: 2^-9. A wrong kernel is off by O(1).
"""

import re
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.shapes import shape
from pallas_kernels import fp8_matmul as twin
from tests.helpers import all_dots, raises, rel_err
from tests.implementation_cases import ImplementationTestBase, cases, requires
from tests.pallas_kernels.kernel_support import (
  E4M3,
  ON_GPU,
  U,
  assert_same,
  finished,
  fp8_operands,
  fp8_scale_shape,
  race_detector,
  races_found,
  within,
  xla_fp8,
)


class Fp8Case(NamedTuple):
  a_tile: tuple | None
  b_tile: tuple | None
  a_dtype: type
  bmnk: tuple[int, int, int, int]
  b_dtype: type = E4M3

  @property
  def tiles(self) -> dict:
    return dict(a_tile=self.a_tile, b_tile=self.b_tile)


class ErrorCase(NamedTuple):
  """A request the implementation refuses: ``error`` matching ``match``."""

  a_tile: tuple | None
  b_tile: tuple | None
  match: str
  error: type = NotImplementedError
  a_dtype: type = E4M3
  b_dtype: type = E4M3


def _expand(s, tile, shape):
  """The scale of every element of a (B, R, K) operand, float64."""
  s = np.asarray(s, np.float64)
  if tile is None or tile == (1, None):
    return np.broadcast_to(s, shape)
  s = np.repeat(np.repeat(s, tile[0], 1), tile[1], 2)
  return s[:, : shape[1], : shape[2]]


def float64_product(a_q, a_s, b_q, b_s, a_tile, b_tile):
  """(exact product, sum_k |terms|) in float64."""
  a = np.asarray(a_q.astype(jnp.float32), np.float64)
  b = np.asarray(b_q.astype(jnp.float32), np.float64)
  a_scaled = a * _expand(a_s, a_tile, a.shape)
  b_scaled = b * _expand(b_s, b_tile, b.shape)
  exact = np.einsum("bmk,bnk->bmn", a_scaled, b_scaled)
  return exact, np.einsum("bmk,bnk->bmn", np.abs(a_scaled), np.abs(b_scaled))


class Fp8MatmulTestBase(ImplementationTestBase):
  """Tests of one implementation's ``fp8_matmul`` (module doc).

  Shapes are (B, M, N, K); an empty case table skips that test.
  """

  kernels: types.ModuleType  # fp8_matmul
  interpret = None  # passed to every kernel call
  exact_cases: dict[str, Fp8Case]
  general_cases: dict[str, Fp8Case]
  fp8_budget: str  # "float64" or "chunks" (module doc)
  bf16_case: Fp8Case
  # (a dtype, dtype of the dot inside the kernel) for kernels with jnp dots
  kernel_dot_dtypes: dict[str, tuple] = {}
  unsupported_requests: dict[str, ErrorCase]
  error_shape = shape("tiny_ragged_k300").bmnk
  race_shape: tuple[int, int, int, int] | None = None  # race detector runs

  def _run(self, *ops, **kw):
    kw.setdefault("interpret", self.interpret)
    return finished(self.kernels.fp8_matmul(*ops, **kw))

  @cases("case", "exact_cases")
  def test_exact_with_small_integers(self, case):
    ops = fp8_operands(*case, data="exact")
    got = self._run(*ops, **case.tiles)
    assert got.shape == case.bmnk[:3] and got.dtype == jnp.float32
    want, _ = float64_product(*ops, **case.tiles)
    assert_same(got, want.astype(np.float32), "kernel vs float64")
    assert_same(got, xla_fp8(*ops, **case.tiles), "kernel vs xla")
    twin_out = twin.fp8_matmul_reference(*ops, **case.tiles)
    assert_same(got, twin_out, "kernel vs twin")

  @cases("case", "general_cases")
  def test_general_data_within_budget(self, case):
    a_tile, k = case.a_tile, case.bmnk[3]
    data = "codes" if self.fp8_budget == "float64" else "normal"
    ops = fp8_operands(*case, data=data)
    got = np.asarray(self._run(*ops, **case.tiles))
    assert got.shape == case.bmnk[:3] and got.dtype == np.float32
    want, abs_sum = float64_product(*ops, **case.tiles)
    xla = np.asarray(xla_fp8(*ops, **case.tiles))
    assert within(xla, want, (k + 2) * U * abs_sum)
    if self.fp8_budget == "float64":
      assert within(got, want, (k + 2) * U * abs_sum)
    elif ON_GPU:
      assert rel_err(got, xla) <= (2.0**-7 if a_tile is None else 2.0**-9)
    else:
      chunk = k if a_tile is None or a_tile[1] is None else a_tile[1]
      assert within(got, xla, 2 * chunk * U * abs_sum)

  def test_bf16_output_is_the_rounded_f32_result(self):
    # Exact data: the f32 result is exact and rounded once to bf16.
    tiles, bf16 = self.bf16_case.tiles, jnp.bfloat16
    ops = fp8_operands(*self.bf16_case, data="exact")
    got = self._run(*ops, **tiles, out_dtype=bf16)
    assert got.dtype == bf16
    want = twin.fp8_matmul_reference(*ops, **tiles, out_dtype=bf16)
    assert_same(got, want, "kernel vs twin")
    want = xla_fp8(*ops, **tiles).astype(bf16)
    assert_same(got, want, "kernel vs rounded xla")

  @cases("a_dtype, dot_dtype", "kernel_dot_dtypes")
  def test_mixed_fp8_dot_runs_in_bf16(self, a_dtype, dot_dtype):
    """Triton rejects an E5M2 x E4M3 dot; the kernel widens both to bf16."""
    ops = fp8_operands(None, None, a_dtype, self.error_shape, data="exact")
    kw = dict(a_tile=None, b_tile=None, interpret=self.interpret)
    jaxpr = jax.make_jaxpr(lambda *ops: self.kernels.fp8_matmul(*ops, **kw))
    dots = all_dots(jaxpr(*ops).jaxpr)
    name = np.dtype(dot_dtype).name
    dtypes = {tuple(str(v.aval.dtype) for v in e.invars[:2]) for e in dots}
    assert dtypes == {(name, name)}

  @cases("case", "unsupported_requests")
  def test_unsupported_requests_raise(self, case):
    b, m, n, k = self.error_shape
    a_q = jnp.zeros((b, m, k), case.a_dtype)
    b_q = jnp.zeros((b, n, k), case.b_dtype)
    a_s = jnp.ones(fp8_scale_shape(a_q.shape, case.a_tile), jnp.float32)
    b_s = jnp.ones(fp8_scale_shape(b_q.shape, case.b_tile), jnp.float32)
    tiles = dict(a_tile=case.a_tile, b_tile=case.b_tile)
    with raises(case.match, case.error):
      self.kernels.fp8_matmul(a_q, a_s, b_q, b_s, **tiles)

  def test_bad_scales_raise_with_names(self):
    b, m = self.error_shape[:2]
    for a_tile, b_tile in [((1, 128), (1, 128)), (None, None)]:
      ops = fp8_operands(a_tile, b_tile, E4M3, self.error_shape, data="exact")
      a_q, _, b_q, b_s = ops
      wrong = (1, 1, 1) if a_tile else (b, m, 1)  # per-tensor, per-row
      want = fp8_scale_shape(a_q.shape, a_tile)
      match = re.escape(
        f"a_s has shape {wrong} and dtype float32; for tile {a_tile} "
        f"expected float32 of shape {want}"
      )
      with raises(match):
        self.kernels.fp8_matmul(
          a_q, jnp.ones(wrong), b_q, b_s, a_tile=a_tile, b_tile=b_tile
        )

  @requires("race_shape", "no race detector")
  def test_no_races_without_promotion(self):
    ops = fp8_operands(None, None, E4M3, self.race_shape, data="exact")
    tiles = dict(a_tile=None, b_tile=None)
    got = self._run(*ops, **tiles, interpret=race_detector())
    assert_same(got, xla_fp8(*ops, **tiles))
    assert not races_found()
