"""Command line: ``python -m train --recipe jetfire_int8 [options]``.

``--recipe`` takes one run or a comma-separated list. A run is a recipe,
optionally with ``+optimizer`` (``coat_fp8+adamw_fp8``); without it the run
uses ``--optimizer``. With several runs, each runs in turn (same seed, data
and steps) and a comparison plot and table are written to ``--out``. Each run
lives in ``<out>/<run name>/`` (the recipe, plus ``+optimizer`` unless it is
``adamw``) and resumes from its latest checkpoint when started again.
"""

import argparse
import pathlib
import shlex
import shutil
import sys

from lowprec_jax.ops import RECIPES
from train import data as data_lib
from train.init_from import check_init_from
from train.loop import OPTIMIZERS, TrainConfig, run
from train.model import GPTConfig
from train.provenance import provenance
from train.report import plot_runs, print_table, write_comparison


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m train",
    description="Train a small GPT with a lowprec_jax recipe.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  d, m = TrainConfig(), GPTConfig()
  p.add_argument(
    "--recipe",
    default="jetfire_int8",
    help=f"run or comma-separated runs: a recipe from {sorted(RECIPES)}, "
    "optionally with +optimizer (e.g. coat_fp8+adamw_fp8)",
  )
  p.add_argument(
    "--optimizer",
    default="adamw",
    choices=sorted(OPTIMIZERS),
    help="optimizer of runs that name none: fp32 states (adamw) or "
    "quantized states (lowprec_jax.optim)",
  )
  p.add_argument("--out", default="runs", help="output directory")
  p.add_argument(
    "--data",
    default=None,
    help="text file or folder (default: the Python standard library's sources)",
  )
  p.add_argument("--steps", type=int, default=d.steps)
  p.add_argument("--batch-size", type=int, default=d.batch_size)
  p.add_argument("--seq-len", type=int, default=m.seq_len)
  p.add_argument("--d-model", type=int, default=m.d_model)
  p.add_argument("--layers", type=int, default=m.n_layers)
  p.add_argument("--heads", type=int, default=m.n_heads)
  p.add_argument(
    "--arch",
    default=m.arch,
    choices=["gpt", "llama"],
    help="gpt: LayerNorm, GELU, learned positions; llama: RMSNorm, SwiGLU, "
    "RoPE, optional grouped-query attention (train/llama.py)",
  )
  p.add_argument(
    "--kv-heads",
    type=int,
    default=None,
    help="key/value heads of --arch llama (default: --heads)",
  )
  p.add_argument(
    "--dtype",
    default=m.dtype,
    choices=["bfloat16", "float32"],
    help="compute dtype (parameters are fp32)",
  )
  p.add_argument("--lr", type=float, default=d.lr)
  p.add_argument("--warmup", type=int, default=d.warmup)
  p.add_argument("--weight-decay", type=float, default=d.weight_decay)
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--eval-every", type=int, default=d.eval_every)
  p.add_argument("--eval-batches", type=int, default=d.eval_batches)
  p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
  p.add_argument(
    "--implementation",
    default=None,
    help="GEMM implementation (default: best available)",
  )
  p.add_argument(
    "--init-from",
    default=None,
    metavar="RUN_DIR",
    help="fine-tune: start from the model parameters of that run's latest "
    "checkpoint (fresh optimizer and schedule; same model shape)",
  )
  p.add_argument(
    "--fresh",
    action="store_true",
    help="delete existing run directories instead of resuming",
  )
  p.add_argument("--no-progress", action="store_true")
  return p


def _parse_run(entry: str, default_optimizer: str) -> tuple[str, str]:
  recipe, _, optimizer = entry.partition("+")
  return recipe.strip(), (optimizer.strip() or default_optimizer)


def configs(args) -> list[TrainConfig]:
  runs = [
    _parse_run(r, args.optimizer) for r in args.recipe.split(",") if r.strip()
  ]
  if not runs:
    raise ValueError("--recipe is empty")
  model = GPTConfig(
    seq_len=args.seq_len,
    d_model=args.d_model,
    n_layers=args.layers,
    n_heads=args.heads,
    dtype=args.dtype,
    arch=args.arch,
    n_kv_heads=args.kv_heads,
  )
  return [
    TrainConfig(
      recipe=recipe,
      optimizer=optimizer,
      model=model,
      steps=args.steps,
      batch_size=args.batch_size,
      lr=args.lr,
      warmup=args.warmup,
      weight_decay=args.weight_decay,
      seed=args.seed,
      data=args.data,
      eval_every=args.eval_every,
      eval_batches=args.eval_batches,
      ckpt_every=args.ckpt_every,
      implementation=args.implementation,
      init_from=args.init_from,
    )
    for recipe, optimizer in runs
  ]


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parser().parse_args(argv)
  out = pathlib.Path(args.out)
  try:  # every check before anything is written
    cfgs = configs(args)
    for cfg in cfgs:
      check_init_from(cfg.init_from, cfg.to_json()["model"])
    if out.exists() and not out.is_dir():
      raise ValueError(f"--out {args.out!r} is a file, not a directory")
    # the runs share data and seq_len
    data_lib.check_windows(
      data_lib.load_corpus(cfgs[0].data), cfgs[0].model.seq_len
    )
  except ValueError as e:
    parser().error(str(e))
  info = provenance(command=shlex.join(["python", "-m", "train", *argv]))
  summaries = []
  for cfg in cfgs:
    run_dir = out / cfg.name
    if args.fresh and run_dir.exists():
      shutil.rmtree(run_dir)
    summary = run(cfg, run_dir, provenance=info, progress=not args.no_progress)
    plot_runs({cfg.name: run_dir}, run_dir / "loss.png", cfg.name)
    summaries.append(summary)
    print(f"GEMMs per training step ({cfg.name}):")
    print("\n".join(summary["gemms"]["summary"]))
  rows = write_comparison(out, summaries, info)
  if len(summaries) > 1:
    print_table(rows, f"{len(rows)} runs, {cfgs[0].steps} steps each")
  else:
    print_table(rows, cfgs[0].name)
  print(f"summary: {out / 'summary.md'}, plot: {out / 'comparison.png'}")
  return 0
