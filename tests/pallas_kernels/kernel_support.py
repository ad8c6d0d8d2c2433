"""Helpers shared by the kernel test bases (quantize, INT8 GEMM, FP8 GEMM).

Every base runs twice: for the portable Pallas (Triton) kernels, always
through the Pallas interpreter (``interpret=True``), and for the Mosaic GPU
(Hopper) kernels, which run in the Mosaic GPU interpreter on a CPU (about 1 s
per call at 128 x 128 x 256, so shapes are small and cases few) and compiled
on the H200 (``benchmarks/gpu_check.sh``) with realistic shapes:
``ON_GPU`` switches (the ``gpu`` shapes of ``benchmarks/shapes.py``).

The reference of every GEMM is the ``"xla"`` implementation
(``lowprec_jax.ops._xla_gemm.XLA``) on the same codes and scales: the
contract the kernels implement.
"""

import functools

import jax
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np
from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks

from benchmarks import shapes
from lowprec_jax.formats import Fp8, Int8Block, QTensor, quantize
from lowprec_jax.ops._xla_gemm import XLA
from tests.helpers import F32_EPS, normal, rng

ON_GPU = jax.default_backend() == "gpu"
U = F32_EPS  # f32 unit roundoff
E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2
FP8_NAMES = {np.dtype(E4M3): "e4m3", np.dtype(E5M2): "e5m2"}


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def bits(x) -> np.ndarray:
  """The bit patterns of ``x`` (unsigned ints of the same width)."""
  x = np.asarray(x)
  return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize])


def assert_same(got, want, what: str = "", *, bitwise: bool = False):
  """Same shape, dtype and values (NaN equals NaN); ``bitwise``: the same
  bit patterns (NaN payloads and -0.0 included)."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape and got.dtype == want.dtype, what
  if bitwise:
    got, want = bits(got), bits(want)
  np.testing.assert_array_equal(got, want, err_msg=what)


assert_bitwise = functools.partial(assert_same, bitwise=True)


def within(got, want, bound) -> bool:
  """|got - want| <= bound elementwise, in float64."""
  diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
  return bool(np.all(diff <= bound))


def finished(x):
  """Waits for ``x``. An interpreted Mosaic kernel runs its simulated threads
  as XLA computations inside callbacks; dispatching more XLA work while they
  run can exhaust the 2-core CPU host's thread pool and deadlock."""
  return jax.block_until_ready(x)


def race_detector():
  """``interpret=`` for a Mosaic GPU kernel run that looks for races."""
  return plgpu.InterpretGPUParams(detect_races=True)


def races_found() -> bool:
  """Whether the last interpreted kernel (detect_races=True) had a race."""
  return bool(gpu_callbacks.get_races().races_found)


# ------------------------------------------------------------ GEMM operands


def exact_scale_exponents(k: int) -> int:
  """E such that scales 2^e, |e| <= E, keep a GEMM of codes in [-5, 5] exact.

  Every term (code x code x sa x sb) is a multiple of 2^-2E and every partial
  sum has magnitude at most 25 K 2^2E, so it needs log2(25 K) + 4E bits: at
  most 22 with E = 2 for K <= 512, and at most 21 with E = 1 for K <= 4096
  (the GPU's aligned shape). Within f32's 24 bits every product and partial
  sum is exact, in any order.
  """
  return 2 if k <= 512 else 1


def _scales(g, shape, exact: bool, e: int, log_mean: float):
  """Scales 2^e', |e'| <= e (exact) or log-normal around e^log_mean."""
  if exact:
    return jnp.asarray(2.0 ** g.integers(-e, e + 1, shape), jnp.float32)
  return jnp.asarray(g.lognormal(log_mean, 1, shape), jnp.float32)


def int8_operands(bmnk, block, *, exact, seed, scale_exponents=None):
  """(a_q, a_s, b_q, b_s) of a block-scaled INT8 GEMM (B, M, N, K).

  Exact: codes in [-5, 5], scales 2^e with |e| <= ``scale_exponents``
  (default ``exact_scale_exponents(K)``). General: codes over [-127, 127]
  and log-normal scales.
  """
  b, m, n, k = bmnk
  g = rng("int8_matmul", tuple(bmnk), block, exact, seed)
  limit = 5 if exact else 127
  e = exact_scale_exponents(k) if scale_exponents is None else scale_exponents

  def operand(rows):
    codes = g.integers(-limit, limit + 1, (b, rows, k))
    shape = (b, cdiv(rows, block), cdiv(k, block))
    return jnp.asarray(codes, jnp.int8), _scales(g, shape, exact, e, -4)

  return *operand(m), *operand(n)


def fp8_scale_shape(shape, tile) -> tuple[int, int, int]:
  """Scales of a (B, R, K) operand over ``tile``."""
  b, r, k = shape
  if tile is None:
    return (1, 1, 1)
  if tile == (1, None):
    return (b, r, 1)
  return (b, cdiv(r, tile[0]), cdiv(k, tile[1]))


def fp8_operands(
  a_tile, b_tile, a_dtype, bmnk, b_dtype=E4M3, *, data: str, seed: int = 3
):
  """(a_q, a_s, b_q, b_s) of a scaled FP8 GEMM (B, M, N, K).
  The arguments are an ``Fp8Case``'s fields.

  ``data``: ``"exact"`` (codes in [-5, 5], exact in E4M3 and E5M2, scales
  2^e as ``exact_scale_exponents``), ``"codes"`` (every finite FP8 code,
  log-normal scales) or ``"normal"`` (standard normal values quantized with
  the library, as activations and weights are).
  """
  b, m, n, k = bmnk
  if data == "normal":
    a_fmt = Fp8(FP8_NAMES[np.dtype(a_dtype)], a_tile)
    a = quantize(normal((b, m, k), seed=seed), a_fmt)
    b_fmt = Fp8(FP8_NAMES[np.dtype(b_dtype)], b_tile)
    w = quantize(normal((b, n, k), seed=seed + 1), b_fmt)
    return a.qvalue, a.scale, w.qvalue, w.scale
  exact = data == "exact"
  g = rng("fp8_matmul", a_tile, b_tile, str(a_dtype), str(b_dtype), exact)

  def operand(rows, dtype, tile):
    if exact:
      codes = jnp.asarray(g.integers(-5, 6, (b, rows, k)).astype(np.float32))
    else:
      finite = np.arange(256, dtype=np.uint8).view(dtype)
      finite = finite[np.isfinite(finite.astype(np.float32))]
      codes = jnp.asarray(g.choice(finite, (b, rows, k)))
    shape = fp8_scale_shape((b, rows, k), tile)
    scales = _scales(g, shape, exact, exact_scale_exponents(k), -3)
    return codes.astype(dtype), scales

  return *operand(m, a_dtype, a_tile), *operand(n, b_dtype, b_tile)


# (B, M, N, K) of the Mosaic GEMM tests: aligned, ragged and exact (on a
# GPU, a shape whose K keeps exact data exact; interpreted, the aligned one).
_SIZE = "gpu" if ON_GPU else "small"
MOSAIC_BMNK = [shapes.shape(f"{_SIZE}_{k}").bmnk for k in ("aligned", "ragged")]
MOSAIC_BMNK.append(shapes.shape("gpu_exact").bmnk if ON_GPU else MOSAIC_BMNK[0])


# ------------------------------------------------------------- references

_xla_gemm = jax.jit(XLA.matmul, static_argnums=2)


def xla_int8(a_q, a_s, b_q, b_s, block, out_dtype=jnp.float32):
  """The ``"xla"`` block-scaled INT8 GEMM (under jit) on the same codes."""
  fmt = Int8Block(block)
  a, b = QTensor(a_q, a_s, fmt), QTensor(b_q, b_s, fmt)
  return finished(_xla_gemm(a, b, out_dtype))


def xla_fp8(a_q, a_s, b_q, b_s, a_tile, b_tile, out_dtype=jnp.float32):
  """The ``"xla"`` scaled FP8 GEMM (under jit) on the same codes."""
  a = QTensor(a_q, a_s, Fp8(FP8_NAMES[np.dtype(a_q.dtype)], a_tile))
  b = QTensor(b_q, b_s, Fp8(FP8_NAMES[np.dtype(b_q.dtype)], b_tile))
  return finished(_xla_gemm(a, b, out_dtype))
