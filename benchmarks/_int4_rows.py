"""The INT4 rows of ``benchmarks.kernels``: the op and its GEMM kernels.

Two kinds of row, both timed like every other row and compared with XLA
bf16 of the same shape and mode in the same run:

* the INT4 op (``int4_dot_general``) of one Linear, forward and forward +
  backward, per recipe (``int4_hq_b32``, ``int4_hq_released``,
  ``int4_hq_b16``, ``int4_hq``: the fastest first) and implementation,
  with the Hadamard block and LSQ steps fixed as in ``benchmarks.traffic``
  (a trained layer's state; the search is not timed);
* mode ``"gemm"``: one INT4 x INT4 GEMM kernel alone on packed codes
  (``pallas_kernels.mosaic.int4_matmul`` and the portable
  ``pallas_kernels.int4_matmul``), per scale tile, against the bf16 GEMM of
  the same shape: what unpacking in the kernel costs against int8 ``wgmma``
  throughput, without the quantizers around it.
"""

import functools

import jax
import jax.numpy as jnp

from benchmarks.traffic import DIMS, INT4_BLOCK_INDEX, INT4_STEPS
from lowprec_jax.ops import (
  int4_dot_general,
  int4_hq,
  int4_hq_b16,
  int4_hq_b32,
  int4_hq_released,
)
from pallas_kernels import int4_matmul as portable
from pallas_kernels import tiles
from pallas_kernels.int4 import pack_int4
from pallas_kernels.int4_matmul import Int4Operand
from pallas_kernels.mosaic import int4_matmul as mosaic

RECIPES = {
  "int4_hq_b32": int4_hq_b32(),
  "int4_hq_released": int4_hq_released(),
  "int4_hq_b16": int4_hq_b16(),
  "int4_hq": int4_hq(),
}
# "gemm" rows: name -> scale tile of both packed operands.
GEMMS = {
  "int4_gemm_tensor": None,
  "int4_gemm_b32": (32, 32),
  "int4_gemm_b128": (128, 128),
}
GEMM_KERNELS = {"mosaic": mosaic.int4_matmul, "pallas": portable.int4_matmul}
# The op's implementations in the order they are timed (the kernels first).
IMPLEMENTATIONS = ("pallas", "mosaic", "xla")
GEMM_MODE = "gemm"


def is_int4(recipe: str | None) -> bool:
  return recipe in RECIPES or recipe in GEMMS


def linear(recipe: str, impl: str):
  """f(x, w) of one Linear through the INT4 op."""
  return lambda x, w: int4_dot_general(
    x,
    w,
    DIMS,
    config=RECIPES[recipe],
    block_index=INT4_BLOCK_INDEX,
    steps=jnp.asarray(INT4_STEPS, jnp.float32),
    seed=0,
    implementation=impl,
  )


def gemm_program(recipe: str, impl: str, m: int, k: int, n: int):
  """(jitted GEMM of packed codes, its arguments) for a ``"gemm"`` row."""
  tile = GEMMS[recipe]
  op = Int4Operand(tile, packed=True)
  args = []
  for i, rows in enumerate((m, n)):
    key = jax.random.key(i)
    codes = jax.random.randint(key, (1, rows, k), -8, 8, jnp.int8)
    scale = jnp.ones(tiles.scale_shape((1, rows, k), tile), jnp.float32)
    args += [pack_int4(codes), scale]
  kernel = functools.partial(
    GEMM_KERNELS[impl], a=op, b=op, out_dtype=jnp.bfloat16
  )
  return jax.jit(kernel), args


def cases(shape, modes, recipes, impls):
  """(shape name, m, k, n, recipe, impl, mode) rows of one shape in
  ``modes``: the op's forward + backward, then forward, then the GEMM
  kernels alone."""
  s = shape
  op_recipes = [r for r in RECIPES if r in recipes]
  for mode in [m for m in ("fwd_bwd", "fwd") if m in modes]:
    for recipe in op_recipes:
      for impl in [i for i in IMPLEMENTATIONS if i in impls]:
        yield s.name, s.m, s.k, s.n, recipe, impl, mode
  if GEMM_MODE in modes and any(r in GEMMS for r in recipes):
    yield s.name, s.m, s.k, s.n, None, "bf16", GEMM_MODE
    for recipe in [r for r in GEMMS if r in recipes]:
      for impl in [i for i in GEMM_KERNELS if i in impls]:
        yield s.name, s.m, s.k, s.n, recipe, impl, GEMM_MODE
