"""Device timing, copy bandwidth and which XLA GEMM path a program uses.

Timing follows ``/work/.library/device/METHOD.md``: compile and warm up
first, then time each call from dispatch to ``block_until_ready`` (device
work is asynchronous; the sync makes the host clock honest), report the
median and the spread (min, max) of many calls. Inputs of the real shapes
are several times the 50 MB L2, so repeated calls do not measure the cache.

A kernel of tens of microseconds is timed on the device side instead
(:func:`time_in_loop`): ``repeats`` dependent calls inside one jitted loop,
so the host's dispatch and sync (tens of microseconds, 20-40 points of a
bandwidth figure) are paid once per loop, not once per call.
"""

import re
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

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


def time_in_loop(fn, x, *, repeats: int, warmup: int, iters: int) -> dict:
  """Like :func:`time_calls`, per call of ``fn(x)``, from ``repeats`` calls
  in one jitted ``fori_loop``.

  Each call's outputs are the loop's carry (so every call computes all of
  them: nothing is dead) and feed back into ``x`` through an added zero
  that XLA cannot prove zero (``0 * v`` is NaN for an infinite v), so no
  call can be hoisted out of the loop or merged with another. The loop
  costs one copy of ``x`` and one scalar update per call.
  """
  outs = jax.eval_shape(fn, x)

  def body(_, carry):
    x, _ = carry
    out = fn(x)
    first = jax.tree.leaves(out)[0].reshape(-1)[0].astype(jnp.float32)
    zero = (first * 0).astype(x.dtype)
    return x.at[(0,) * x.ndim].add(zero), out

  def looped(x):
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), outs)
    return lax.fori_loop(0, repeats, body, (x, init))[1]

  t = time_calls(jax.jit(looped), (x,), warmup=warmup, iters=iters)
  return {
    **{k: t[k] / repeats for k in ("median_s", "min_s", "max_s")},
    "iters": iters,
    "repeats": repeats,
  }


# An FP8 dot anywhere in compiled HLO (a cuBLASLt call's operands, or the
# dot inside a Triton GEMM fusion): ``dot(f8e4m3fn[...] ...``.
_FP8_DOT = re.compile(r"\bdot\(f8e[45]m[23]\w*\[")


def fp8_gemm_path(compiled_text: str) -> str | None:
  """``"cublaslt_fp8"`` or ``"triton_fp8"`` if compiled HLO multiplies FP8
  operands on a GEMM path, else None (the dot ran in a wider type)."""
  if "__cublas$lt$matmul$f8" in compiled_text:
    return "cublaslt_fp8"
  if _FP8_DOT.search(compiled_text) and "__triton" in compiled_text:
    return "triton_fp8"
  return None


def gemm_paths(compiled_text: str) -> list[str]:
  """Names of the GEMM paths whose markers appear in compiled HLO."""
  found = []
  for name, marker in XLA_PATHS:
    if marker in compiled_text and not any(name.startswith(f) for f in found):
      found.append(name)
  return found


def copy_bandwidth(
  nbytes: int, *, warmup: int, iters: int, repeats: int = 1
) -> dict:
  """Bytes/s of a device elementwise copy (read + write) of ``nbytes``,
  timed like the quantize kernels (:func:`time_in_loop`).

  ``-x`` rather than ``x`` so that XLA cannot elide the copy.
  """
  x = jnp.ones((nbytes // 4,), jnp.float32)
  t = time_in_loop(lambda v: -v, x, repeats=repeats, warmup=warmup, iters=iters)
  return {
    "bytes": 2 * x.nbytes,
    **t,
    "bytes_per_s": 2 * x.nbytes / t["median_s"],
  }
