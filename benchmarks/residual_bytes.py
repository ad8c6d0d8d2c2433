"""Bytes a Linear saves for its backward pass, per recipe, against bf16.

Exact: the residuals are the leaves of ``jax.vjp``'s backward function,
whose shapes and dtypes come from ``jax.eval_shape`` (nothing is computed,
so real model sizes cost nothing). The bf16 baseline is ``lax.dot_general``
on bf16 x and w, which saves both. Device-independent.

  python -m benchmarks.residual_bytes   # writes results/residual_bytes.{json,md}
"""

import json
import pathlib
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.shapes import SHAPES
from lowprec_jax.ops import fp8_block, fp8_current, jetfire_int8
from lowprec_jax.ops import quantized_dot_general as qdg
from train.provenance import provenance

DIMS = (((1,), (0,)), ((), ()))
RECIPES = {
  "jetfire_int8": jetfire_int8(),
  "jetfire_int8_b128": jetfire_int8(128),
  "fp8_current": fp8_current(),
  "fp8_block": fp8_block(),
}


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
  for name, m, k, n in SHAPES:
    base = residual_bytes(lambda a, b: jax.lax.dot_general(a, b, DIMS), m, k, n)
    row = {"shape": name, "m": m, "k": k, "n": n, "bf16_bytes": base}
    for recipe, cfg in RECIPES.items():
      got = residual_bytes(
        lambda a, b, cfg=cfg: qdg(a, b, DIMS, config=cfg, seed=0), m, k, n
      )
      row[f"{recipe}_bytes"] = got
      row[f"{recipe}_ratio"] = round(got / base, 4)
    rows.append(row)
  return rows


def main() -> None:
  rows = measure()
  out = pathlib.Path(__file__).parent / "results" / "residual_bytes.json"
  info = provenance(
    command=shlex.join(
      ["python", "-m", "benchmarks.residual_bytes", *sys.argv[1:]]
    )
  )
  out.write_text(
    json.dumps({"rows": rows, "provenance": info}, indent=2) + "\n"
  )
  print(f"{'shape':<20}" + "".join(f"{r:>20}" for r in RECIPES))
  for row in rows:
    print(
      f"{row['shape']:<20}"
      + "".join(f"{row[f'{r}_ratio']:>19.4f}x" for r in RECIPES)
    )
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
