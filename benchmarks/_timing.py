"""Device timing, copy bandwidth and which XLA GEMM path a program uses.

Timing follows ``/work/.library/device/METHOD.md``: compile and warm up
first, then time each call from dispatch to ``block_until_ready`` (device
work is asynchronous; the sync makes the host clock honest), report the
median and the spread (min, max) of many calls. Inputs of the real shapes
are several times the 50 MB L2, so repeated calls do not measure the cache.
"""

import statistics
import time

import jax
import jax.numpy as jnp

# Markers of the GEMM paths XLA can pick, searched in compiled HLO text.
XLA_PATHS = (
  ("cublaslt_fp8", "__cublas$lt$matmul$f8"),
  ("cublaslt", "__cublas$lt$matmul"),
  ("cublas", "__cublas$gemm"),
  ("triton_gemm", "__triton_gemm"),
  ("triton", "__triton"),
  ("mosaic_gpu", "mosaic_gpu"),
)


def time_calls(fn, args, *, warmup: int, iters: int) -> dict:
  """Median, min and max seconds per call of a compiled ``fn(*args)``."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return {
    "median_s": statistics.median(times),
    "min_s": min(times),
    "max_s": max(times),
    "iters": iters,
  }


def gemm_paths(compiled_text: str) -> list[str]:
  """Names of the GEMM paths whose markers appear in compiled HLO."""
  found = []
  for name, marker in XLA_PATHS:
    if marker in compiled_text and not any(name.startswith(f) for f in found):
      found.append(name)
  return found


def copy_bandwidth(nbytes: int, *, warmup: int, iters: int) -> dict:
  """Bytes/s of a device elementwise copy (read + write) of ``nbytes``.

  ``-x`` rather than ``x`` so that XLA cannot elide the copy.
  """
  x = jnp.ones((nbytes // 4,), jnp.float32)
  fn = jax.jit(lambda v: -v)
  t = time_calls(fn, (x,), warmup=warmup, iters=iters)
  return {
    "bytes": 2 * x.nbytes,
    **t,
    "bytes_per_s": 2 * x.nbytes / t["median_s"],
  }
