"""Bytes a Linear saves for its backward pass, per recipe, against bf16.

Exact: the residuals are the leaves of ``jax.vjp``'s backward function,
whose shapes and dtypes come from ``jax.eval_shape`` (nothing is computed,
so real model sizes cost nothing). The bf16 baseline is ``lax.dot_general``
on bf16 x and w, which saves both. Device-independent.

  python -m benchmarks.residual_bytes   # writes results/residual_bytes.{json,md}
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._results import write_results
from benchmarks.shapes import shapes
from lowprec_jax.ops import (
  Int4Config,
  fp8_block,
  fp8_current,
  int4_dot_general,
  int4_hq,
  int4_hq_b16,
  int4_hq_b32,
  jetfire_int8,
)
from lowprec_jax.ops import quantized_dot_general as qdg

DIMS = (((1,), (0,)), ((), ()))
RECIPES = {
  "jetfire_int8": jetfire_int8(),
  "jetfire_int8_b128": jetfire_int8(128),
  "fp8_current": fp8_current(),
  "fp8_block": fp8_block(),
  "int4_hq": int4_hq(),
  "int4_hq_b32": int4_hq_b32(),
  "int4_hq_b16": int4_hq_b16(),
}


def _linear(cfg):
  """The Linear's matmul under ``cfg`` (INT4: block 0, unit steps; the
  residuals' shapes do not depend on them)."""
  if isinstance(cfg, Int4Config):
    steps = jnp.ones((2,), jnp.float32)
    return lambda a, b: int4_dot_general(
      a, b, DIMS, config=cfg, block_index=0, steps=steps, seed=0
    )
  return lambda a, b: qdg(a, b, DIMS, config=cfg, seed=0)


def residual_bytes(fn, m, k, n) -> int:
  x = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((k, n), jnp.bfloat16)
  vjp = jax.eval_shape(lambda a, b: jax.vjp(fn, a, b)[1], x, w)
  return sum(
    int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    for leaf in jax.tree.leaves(vjp)
  )


def measure() -> list[dict]:
  rows = []
  for s in shapes("bench"):
    name, m, k, n = s.name, s.m, s.k, s.n
    base = residual_bytes(lambda a, b: jax.lax.dot_general(a, b, DIMS), m, k, n)
    row = {"shape": name, "m": m, "k": k, "n": n, "bf16_bytes": base}
    for recipe, cfg in RECIPES.items():
      got = residual_bytes(_linear(cfg), m, k, n)
      row[f"{recipe}_bytes"] = got
      row[f"{recipe}_ratio"] = round(got / base, 4)
    rows.append(row)
  return rows


def markdown(result: dict, info: dict) -> str:
  """The ratios as a Markdown table, with where they came from."""
  head = "| shape (M x K x N) | bf16 MiB | " + " | ".join(RECIPES) + " |\n"
  head += "|---" * (len(RECIPES) + 2) + "|\n"
  lines = [
    f"| {r['shape']} ({r['m']} x {r['k']} x {r['n']}) "
    f"| {r['bf16_bytes'] / 2**20:.1f} | "
    + " | ".join(f"{r[f'{name}_ratio']:.4f}x" for name in RECIPES)
    + " |"
    for r in result["rows"]
  ]
  return (
    "Bytes saved for backward by one Linear, relative to bf16 "
    f"(`{info['command']}`, commit {info['commit']}, jax {info['jax']}).\n\n"
    + head
    + "\n".join(lines)
    + "\n"
  )


def main() -> None:
  result = {"rows": measure()}
  argv = sys.argv[1:]
  write_results(
    "residual_bytes", "benchmarks.residual_bytes", argv, result, markdown
  )


if __name__ == "__main__":
  main()
