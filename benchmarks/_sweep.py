"""A few Mosaic GEMM tile configs at the target shape, the raw kernels alone.

The defaults of ``pallas_kernels.mosaic.default_config`` were chosen without
a GPU (register and SMEM arithmetic, jax's Hopper examples); this measures
them against a handful of alternatives (``candidate_configs`` of
``pallas_kernels.mosaic._config``) so the next change is data-driven. Forward
GEMM only (no quantization), codes random, scales one.
"""

import jax
import jax.numpy as jnp

from benchmarks._timing import time_calls
from pallas_kernels.mosaic import TuningConfig
from pallas_kernels.mosaic._config import CANDIDATE_KERNELS, candidate_configs
from pallas_kernels.mosaic.fp8_matmul import fp8_matmul
from pallas_kernels.mosaic.int8_matmul import int8_block_matmul

PEAK_8BIT = 1979e12


def _call(kernel: str, m, k, n, config: TuningConfig):
  key = jax.random.key(1)
  if kernel.startswith("int8"):
    block = int(kernel.removeprefix("int8_block"))
    a = jax.random.randint(key, (1, m, k), -127, 128, jnp.int8)
    b = jax.random.randint(key, (1, n, k), -127, 128, jnp.int8)
    sa = jnp.ones((1, -(-m // block), -(-k // block)), jnp.float32)
    sb = jnp.ones((1, -(-n // block), -(-k // block)), jnp.float32)

    def fn(a, sa, b, sb):
      return int8_block_matmul(
        a, sa, b, sb, block=block, out_dtype=jnp.bfloat16, config=config
      )

    return fn, (a, sa, b, sb)
  a = jax.random.normal(key, (1, m, k), jnp.float32).astype(jnp.float8_e4m3fn)
  b = jax.random.normal(key, (1, n, k), jnp.float32).astype(jnp.float8_e4m3fn)
  if kernel == "fp8_tensor":
    tiles = (None, None)
    sa = sb = jnp.ones((1, 1, 1), jnp.float32)
  else:
    tiles = ((1, 128), (128, 128))
    sa = jnp.ones((1, m, -(-k // 128)), jnp.float32)
    sb = jnp.ones((1, -(-n // 128), -(-k // 128)), jnp.float32)

  def fn(a, sa, b, sb):
    return fp8_matmul(
      a,
      sa,
      b,
      sb,
      a_tile=tiles[0],
      b_tile=tiles[1],
      out_dtype=jnp.bfloat16,
      config=config,
    )

  return fn, (a, sa, b, sb)


def sweep(m, k, n, *, warmup, iters, deadline, clock) -> list[dict]:
  """One row per (kernel, config); errors and skips are rows too."""
  rows = []
  for kernel in CANDIDATE_KERNELS:
    configs = candidate_configs(kernel)
    base = configs[0]
    for config in configs:
      row = {"kernel": kernel, "config": str(config), "default": config == base}
      if clock() > deadline:
        rows.append({**row, "status": "skipped: time budget"})
        continue
      try:
        fn, args = _call(kernel, m, k, n, config)
        t = time_calls(jax.jit(fn), args, warmup=warmup, iters=iters)
        tflops = 2 * m * k * n / t["median_s"] / 1e12
        rows.append(
          {
            **row,
            "status": "ok",
            **t,
            "tflops": tflops,
            "pct_peak": 100 * tflops * 1e12 / PEAK_8BIT,
          }
        )
      except Exception as e:  # a config that fails must not end the sweep
        rows.append({**row, "status": f"error: {type(e).__name__}: {e}"[:300]})
      print(rows[-1]["kernel"], rows[-1]["status"], rows[-1].get("tflops"))
  return rows
