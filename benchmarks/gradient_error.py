"""Gradient error of each recipe against fp32, on the training GPT.

For the same parameters and batches, the gradient of the loss with every
recipe (bf16 compute) is compared with the fp32, unquantized gradient:
relative error ||g - g32|| / ||g32||, cosine, norm ratio and the projection
ratio <g, g32> / ||g32||^2 (1 means no systematic shrink or growth), averaged
over batches, for the whole model and per block Linear.

  python -m benchmarks.gradient_error                     # at initialization
  python -m benchmarks.gradient_error --run runs/bf16     # a run's checkpoint

Writes results/gradient_error_<init|stepN>.json and .md.
"""

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._results import write_results
from train import data as data_lib
from train.checkpoint import Checkpoints
from train.loop import TrainConfig, build
from train.model import GPT, GPTConfig, loss_fn, quantize_gpt

RECIPES = ("bf16", "jetfire_int8", "fp8_current", "fp8_block")


def _params(run: pathlib.Path | None):
  cfg = TrainConfig()
  if run is not None:
    cfg = TrainConfig.from_json(json.loads((run / "config.json").read_text()))
  graphdef, state, _ = build(cfg)
  step = 0
  if run is not None:
    checkpoints = Checkpoints(run / "checkpoints", every=cfg.ckpt_every)
    step = checkpoints.latest_step()
    if step is None:
      raise ValueError(f"--run {run} has no checkpoint")
    state = checkpoints.restore(step, state)
  model, _ = nnx.merge(graphdef, state)
  return cfg, nnx.state(model, nnx.Param), step


def _gradients(cfg, params, recipe, dtype, batches):
  model = GPT(
    GPTConfig(**{**cfg.model.__dict__, "dtype": dtype}), rngs=nnx.Rngs(0)
  )
  nnx.update(model, params)
  quantize_gpt(model, recipe, rngs=nnx.Rngs(quant=1))
  grad = nnx.jit(nnx.grad(loss_fn))
  out = []
  for batch in batches:
    leaves = jax.tree_util.tree_leaves_with_path(grad(model, batch))
    out.append(
      {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): (
          np.asarray(leaf, np.float64).ravel()
        )
        for path, leaf in leaves
      }
    )
  return out


def _stats(got: list[np.ndarray], ref: list[np.ndarray]) -> dict:
  def mean(f):
    return float(np.mean([f(g, r) for g, r in zip(got, ref)]))

  return {
    "rel_err": mean(lambda g, r: np.linalg.norm(g - r) / np.linalg.norm(r)),
    "cosine": mean(lambda g, r: g @ r / np.linalg.norm(g) / np.linalg.norm(r)),
    "norm_ratio": mean(lambda g, r: np.linalg.norm(g) / np.linalg.norm(r)),
    "proj_ratio": mean(lambda g, r: g @ r / (r @ r)),
  }


def measure(run: pathlib.Path | None, num_batches: int = 3) -> dict:
  cfg, params, step = _params(run)
  corpus = data_lib.load_corpus(cfg.data)
  batches = [
    jnp.asarray(
      data_lib.train_batch(
        corpus,
        seed=cfg.seed + 1000,
        step=i,
        batch_size=cfg.batch_size,
        seq_len=cfg.model.seq_len,
      )
    )
    for i in range(num_batches)
  ]
  ref = _gradients(cfg, params, "bf16", "float32", batches)
  layers = [k for k in ref[0] if k.startswith("blocks/") and "kernel" in k]
  rows = []
  for recipe in RECIPES:
    got = _gradients(cfg, params, recipe, cfg.model.dtype, batches)
    whole = [np.concatenate(list(g.values())) for g in got]
    whole_ref = [np.concatenate(list(r.values())) for r in ref]
    row = {"recipe": recipe, "model": _stats(whole, whole_ref)}
    row["layers"] = {
      k.replace("/kernel/value", ""): _stats(
        [g[k] for g in got], [r[k] for r in ref]
      )["rel_err"]
      for k in layers
    }
    rows.append(row)
  return {"step": step, "num_batches": num_batches, "rows": rows}


def markdown(result: dict, info: dict) -> str:
  lines = [
    f"Gradient vs fp32 at step {result['step']} ({result['num_batches']} "
    f"batches; `{info['command']}`, commit {info['commit']}, jax "
    f"{info['jax']}).",
    "",
    "| recipe | rel. error | cosine | norm ratio | projection ratio |",
    "|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    m = r["model"]
    lines.append(
      f"| {r['recipe']} | {m['rel_err']:.4f} | {m['cosine']:.5f} "
      f"| {m['norm_ratio']:.4f} | {m['proj_ratio']:.4f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(prog="python -m benchmarks.gradient_error")
  parser.add_argument("--run", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  result = measure(args.run)
  name = "init" if args.run is None else f"step{result['step']}"
  write_results(
    f"gradient_error_{name}",
    "benchmarks.gradient_error",
    argv,
    result,
    markdown,
  )


if __name__ == "__main__":
  main()
