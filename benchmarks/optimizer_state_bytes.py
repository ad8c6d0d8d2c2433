"""Exact bytes of optimizer state per parameter, for real model shapes.

``jax.eval_shape(tx.init, params)`` gives the state's shapes and dtypes
without allocating anything, so GPT-2 124M and LLaMA-7B cost nothing. Bytes
per parameter = all state bytes (codes, per-group stats, the fp32 moments of
unquantized leaves, counts) / number of parameters. Two masks: the default
one (embeddings, norms, biases and tensors under 4096 elements keep fp32
states) and every matrix quantized. fp32 AdamW (optax.adamw) is 8.

  python -m benchmarks.optimizer_state_bytes   # results/optimizer_state_bytes.*
"""

import math
import sys

import jax
import jax.numpy as jnp
import optax

from benchmarks._results import write_results
from lowprec_jax.optim import (
  Fp8Dre,
  adamw_4bit,
  adamw_8bit,
  adamw_fp8,
  quantize_mask,
  state_bytes,
)

COMPACT = Fp8Dre(compact=True)
OPTIMIZERS = {
  "adamw (fp32)": lambda mask: optax.adamw(1e-3),
  "adamw_fp8": lambda mask: adamw_fp8(1e-3, quantize_mask=mask),
  "adamw_fp8 compact": lambda mask: adamw_fp8(
    1e-3, quantize_mask=mask, mu_format=COMPACT, nu_format=COMPACT
  ),
  "adamw_fp8 (E5M2 v)": lambda mask: adamw_fp8(
    1e-3, quantize_mask=mask, nu_format=Fp8Dre(dtype="e5m2")
  ),
  "adamw_8bit": lambda mask: adamw_8bit(1e-3, quantize_mask=mask),
  "adamw_4bit": lambda mask: adamw_4bit(1e-3, quantize_mask=mask),
}
MASKS = {
  "default": None,
  "all matrices": quantize_mask(min_size=0, exclude=None),
}


def gpt2_124m() -> dict:
  """GPT-2 small (tied head): 124,439,808 parameters."""
  d, vocab, ctx, layers = 768, 50257, 1024, 12
  block = {
    "ln_1": {"scale": (d,), "bias": (d,)},
    "attn": {
      "c_attn": {"kernel": (d, 3 * d), "bias": (3 * d,)},
      "c_proj": {"kernel": (d, d), "bias": (d,)},
    },
    "ln_2": {"scale": (d,), "bias": (d,)},
    "mlp": {
      "c_fc": {"kernel": (d, 4 * d), "bias": (4 * d,)},
      "c_proj": {"kernel": (4 * d, d), "bias": (d,)},
    },
  }
  return {
    "wte": {"embedding": (vocab, d)},
    "wpe": {"embedding": (ctx, d)},
    "h": {str(i): block for i in range(layers)},
    "ln_f": {"scale": (d,), "bias": (d,)},
  }


def llama_7b() -> dict:
  """LLaMA-7B (untied head, no biases): 6,738,415,616 parameters."""
  d, ff, vocab, layers = 4096, 11008, 32000, 32
  block = {
    "self_attn": {n: {"kernel": (d, d)} for n in ("q", "k", "v", "o")},
    "mlp": {
      "gate": {"kernel": (d, ff)},
      "up": {"kernel": (d, ff)},
      "down": {"kernel": (ff, d)},
    },
    "input_norm": {"scale": (d,)},
    "post_attention_norm": {"scale": (d,)},
  }
  return {
    "embed_tokens": {"embedding": (vocab, d)},
    "layers": {str(i): block for i in range(layers)},
    "norm": {"scale": (d,)},
    "lm_head": {"kernel": (d, vocab)},
  }


MODELS = {"gpt2_124m": gpt2_124m, "llama_7b": llama_7b}


def _abstract(shapes: dict):
  return jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
    shapes,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def measure(models=MODELS) -> dict:
  rows = []
  for model, make_shapes in models.items():
    params = _abstract(make_shapes())
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    for mask_name, mask in MASKS.items():
      for opt_name, make in OPTIMIZERS.items():
        if opt_name.startswith("adamw (fp32)") and mask_name != "default":
          continue
        state = jax.eval_shape(make(mask).init, params)
        total = state_bytes(state)
        rows.append(
          {
            "model": model,
            "params": count,
            "mask": mask_name,
            "optimizer": opt_name,
            "state_bytes": total,
            "bytes_per_param": total / count,
          }
        )
  return {"rows": rows}


def markdown(result: dict, info: dict) -> str:
  lines = [
    f"Optimizer state bytes per parameter (exact, from shapes; "
    f"`{info['command']}`, commit {info['commit']}, jax {info['jax']}).",
    "",
    "| model | mask | optimizer | state GiB | bytes / param |",
    "|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['model']} ({r['params'] / 1e6:,.1f} M) | {r['mask']} "
      f"| {r['optimizer']} | {r['state_bytes'] / 2**30:.3f} "
      f"| {r['bytes_per_param']:.4f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  write_results(
    "optimizer_state_bytes",
    "benchmarks.optimizer_state_bytes",
    argv,
    measure(),
    markdown,
  )


if __name__ == "__main__":
  main()
