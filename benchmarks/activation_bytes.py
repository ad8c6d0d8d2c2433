"""Activation bytes one transformer block saves for its backward pass.

For each recipe, the block of ``train/model.py`` (pre-LN, bf16 residual stream
and attention, GELU MLP; recipes applied by ``quantize_gpt``) is compiled as
``(params, x) -> jax.vjp(block, params, x)[1]``: the outputs of that program
are exactly the residuals kept for the backward pass, and
``compiled.memory_analysis().output_size_in_bytes`` is their size. Nothing is
executed, so real model sizes cost only compilation.

The residuals also hold per-block constants (quantized weights, seeds,
scales). Compiling at two token counts and taking the difference isolates the
per-token activation bytes:

    activation bytes / token = (out(T2) - out(T1)) / (T2 - T1)

The sum of the residual leaves' sizes (from ``jax.eval_shape``) is recorded
beside it as a cross-check.

  python -m benchmarks.activation_bytes   # writes results/activation_bytes.*
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._results import write_results
from train.model import GPT, GPTConfig, quantize_gpt

RECIPES = (
  "bf16",
  "fp8_current",
  "jetfire_int8",
  "coat_fp8",
  "int4_hq",
  "int4_hq_b32",
  "int4_hq_b16",
)
# (name, d_model, heads, seq_len, T1 and T2 tokens)
MODELS = (
  ("train_default", 128, 4, 128, 2048, 4096),
  ("gpt2_124m_block", 768, 12, 1024, 4096, 8192),
)


def _residual_program(cfg: GPTConfig, recipe: str, tokens: int):
  rngs = nnx.Rngs(params=0, quant=1)
  model = quantize_gpt(GPT(cfg, rngs=rngs), recipe, rngs=rngs)
  graphdef, state = nnx.split(model.blocks[0])
  x = jax.ShapeDtypeStruct(
    (tokens // cfg.seq_len, cfg.seq_len, cfg.d_model), jnp.dtype(cfg.dtype)
  )

  def residuals(state, x):
    return jax.vjp(lambda s, x: nnx.merge(graphdef, s)(x), state, x)[1]

  return residuals, state, x


def saved_bytes(cfg: GPTConfig, recipe: str, tokens: int) -> tuple[int, int]:
  """(memory_analysis output bytes, sum of residual leaf bytes)."""
  fn, state, x = _residual_program(cfg, recipe, tokens)
  compiled = jax.jit(fn).lower(state, x).compile()
  leaves = jax.tree.leaves(jax.eval_shape(fn, state, x))
  exact = sum(int(np.prod(v.shape)) * v.dtype.itemsize for v in leaves)
  return compiled.memory_analysis().output_size_in_bytes, exact


def measure() -> list[dict]:
  rows = []
  for name, d, heads, seq, t1, t2 in MODELS:
    cfg = GPTConfig(d_model=d, n_heads=heads, seq_len=seq)
    per_token = {}
    for recipe in RECIPES:
      (a1, e1), (a2, e2) = (saved_bytes(cfg, recipe, t) for t in (t1, t2))
      per_token[recipe] = {
        "bytes_per_token": (a2 - a1) / (t2 - t1),
        "leaf_bytes_per_token": (e2 - e1) / (t2 - t1),
        "constant_bytes": a1 - (a2 - a1) / (t2 - t1) * t1,
      }
    base = per_token["bf16"]["bytes_per_token"]
    for recipe, r in per_token.items():
      r["ratio_vs_bf16"] = round(r["bytes_per_token"] / base, 4)
      r["bytes_per_token_over_d"] = r["bytes_per_token"] / d
    rows.append(
      {
        "model": name,
        "d_model": d,
        "heads": heads,
        "seq_len": seq,
        "tokens": [t1, t2],
        "recipes": per_token,
      }
    )
  return rows


def markdown(result: dict, info: dict) -> str:
  head = "| block | " + " | ".join(RECIPES) + " |\n"
  head += "|---" * (len(RECIPES) + 1) + "|\n"
  lines = []
  for r in result["rows"]:
    cells = [
      f"{v['bytes_per_token']:.0f} B/token ({v['ratio_vs_bf16']:.3f}x)"
      for v in (r["recipes"][name] for name in RECIPES)
    ]
    lines.append(
      f"| {r['model']} (d={r['d_model']}, {r['heads']} heads, "
      f"T={r['seq_len']}) | " + " | ".join(cells) + " |"
    )
  return (
    "Activation bytes one transformer block saves for backward, per token, "
    "from `compiled.memory_analysis()`, and the ratio to bf16 "
    f"(`{info['command']}`, commit {info['commit']}, jax {info['jax']}, "
    f"{info['device']}).\n\n" + head + "\n".join(lines) + "\n"
  )


def main() -> None:
  result = {"rows": measure()}
  write_results(
    "activation_bytes",
    "benchmarks.activation_bytes",
    sys.argv[1:],
    result,
    markdown,
  )


if __name__ == "__main__":
  main()
