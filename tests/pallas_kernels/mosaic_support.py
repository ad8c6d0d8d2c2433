"""Shared cases for the Mosaic GPU kernel tests (``test_mosaic_*.py``).

The same tests run in two modes:

* CPU (CI): the kernels run in the Mosaic GPU interpreter, about 1 s per
  call at 128 x 128 x 256, so shapes are small and cases few;
* GPU (``benchmarks/gpu_check.sh`` on the H200): compiled, with realistic
  shapes. ``ON_GPU`` switches.

Codes and scales are built directly as QTensors, so the reference is the
``"xla"`` implementation (``lowprec_jax.ops._xla_gemm.XLA``) on the same
QTensors: the contract the kernels implement.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks

from lowprec_jax.formats import QTensor
from lowprec_jax.ops._xla_gemm import XLA
from pallas_kernels.tiles import scale_shape
from tests.helpers import rng

ON_GPU = jax.default_backend() == "gpu"
U = 2.0**-24  # f32 unit roundoff

# (B, M, N, K): aligned, then ragged in M, N and K.
if ON_GPU:
  ALIGNED = (1, 2048, 2048, 4096)
  # K <= 512 keeps every FP8 partial sum of codes in [-5, 5] below 2^14
  # (see the fp8 tests); K = 504 is ragged (not a multiple of 32).
  RAGGED = (2, 1000, 1000, 504)
  EXACT = (1, 1024, 1024, 512)
else:
  ALIGNED = (1, 128, 128, 256)
  RAGGED = (2, 100, 72, 160)
  EXACT = ALIGNED


def small_codes(shape, dtype, *name):
  """Integer codes in [-5, 5]: exact in int8, e4m3 and e5m2."""
  values = rng("codes", shape, str(np.dtype(dtype)), *name).integers(
    -5, 6, shape
  )
  return jnp.asarray(values, jnp.float32).astype(dtype)


def pow2_scales(shape, *name):
  """Scales in {1/2, 1, 2}: every product and partial sum stays exact."""
  e = rng("scales", shape, *name).integers(-1, 2, shape)
  return jnp.asarray(2.0**e, jnp.float32)


def exact_operand(fmt, shape, *name) -> QTensor:
  """A QTensor of ``fmt`` with small integer codes and power-of-two scales."""
  q = small_codes(shape, fmt.storage_dtype, *name)
  s = pow2_scales(scale_shape(shape, fmt.tile), *name)
  return QTensor(q, s, fmt, np.dtype(jnp.float32))


def reference(a: QTensor, b: QTensor, out_dtype=jnp.float32):
  return XLA.matmul(a, b, out_dtype)


def abs_reference(a: QTensor, b: QTensor):
  """sum_j |P_j| sa sb, bounded above: the same GEMM on |codes|, |scales|."""

  def absolute(t: QTensor) -> QTensor:
    q = jnp.abs(t.qvalue.astype(jnp.float32)).astype(t.qvalue.dtype)
    return QTensor(q, jnp.abs(t.scale), t.format, t.dtype)

  return np.asarray(XLA.matmul(absolute(a), absolute(b), jnp.float32))


def assert_bitwise(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape and got.dtype == want.dtype
  np.testing.assert_array_equal(got, want)


def finished(x):
  """Waits for ``x``. An interpreted kernel runs its simulated threads as XLA
  computations inside callbacks; dispatching more XLA work while they run
  can exhaust the 2-core CPU host's thread pool and deadlock."""
  return jax.block_until_ready(x)


def races_found() -> bool:
  """Whether the last interpreted kernel (detect_races=True) had a race."""
  return bool(gpu_callbacks.get_races().races_found)
