"""Loss-curve plots and summary tables for one run or a comparison.

``python -m train.report OUT_DIR`` redraws a comparison's plots
(``comparison.png`` and each run's ``loss.png``) from the runs' metrics.
"""

import json
import math
import pathlib
import sys

import numpy as np

from train.loop import read_metrics


def _smooth(values, alpha: float = 0.05) -> np.ndarray:
  """Bias-corrected exponential moving average."""
  out, acc, weight = [], 0.0, 0.0
  for v in values:
    acc = (1 - alpha) * acc + alpha * v
    weight = (1 - alpha) * weight + alpha
    out.append(acc / weight)
  return np.asarray(out)


def plot_runs(
  runs: dict[str, pathlib.Path],
  path: pathlib.Path,
  title: str,
  baseline: str = "bf16",
):
  """Train loss (EMA, raw faint) and eval loss of each run in one PNG.

  With a ``baseline`` run and others, a second panel shows each run's EMA
  train loss relative to the baseline's, in percent.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  records = {name: read_metrics(d) for name, d in runs.items()}
  compare = baseline in records and len(records) > 1
  fig, axes = plt.subplots(
    1, 2 if compare else 1, figsize=(13 if compare else 8, 5), dpi=110
  )
  ax = axes[0] if compare else axes
  smoothed = {}
  for i, (name, recs) in enumerate(records.items()):
    color = f"C{i}"
    steps = np.array([r["step"] for r in recs])
    losses = np.array([r["loss"] for r in recs])
    smoothed[name] = (steps, _smooth(losses))
    ax.plot(steps, losses, color=color, alpha=0.15, linewidth=0.8)
    ax.plot(steps, smoothed[name][1], color=color, label=f"{name} (train, EMA)")
    evals = [(r["step"], r["eval_loss"]) for r in recs if "eval_loss" in r]
    if evals:
      ax.plot(*zip(*evals), "o--", color=color, label=f"{name} (eval)")
  low = min(
    min(r["loss"] for r in recs[len(recs) // 4 :]) for recs in records.values()
  )
  top = max(
    max(r["loss"] for r in recs[len(recs) // 10 :]) for recs in records.values()
  )
  ax.set_ylim(bottom=low * 0.97, top=min(top, low * 2.2) * 1.03)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats / byte)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  if compare:
    base_steps, base = smoothed[baseline]
    span = 3.0  # percent; widened to show every run after its first quarter
    for i, (name, (steps, ema)) in enumerate(smoothed.items()):
      if name == baseline:
        continue
      n = min(len(base), len(ema))
      rel = 100 * (ema[:n] / base[:n] - 1)
      axes[1].plot(steps[:n], rel, color=f"C{i}", label=name)
      if n >= 4:
        span = max(span, float(np.ceil(np.abs(rel[n // 4 :]).max())) + 1)
    axes[1].axhline(0, color="C0", linewidth=1, label=baseline)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(f"EMA train loss vs {baseline} (%)")
    axes[1].set_ylim(-span, span)
    axes[1].set_title(f"relative to {baseline}")
    axes[1].grid(alpha=0.3)
    axes[1].legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def comparison_rows(summaries: list[dict], baseline: str = "bf16"):
  """Rows of the comparison table; loss deltas are relative to ``baseline``."""
  base = next((s for s in summaries if s["run"] == baseline), None)
  rows = []
  for s in summaries:
    delta = None
    if base is not None:
      delta = 100 * (s["final_eval_loss"] / base["final_eval_loss"] - 1)
    rows.append(
      {
        "run": s["run"],
        "steps": s["steps"],
        "final_eval_loss": s["final_eval_loss"],
        # nats per byte-level token -> bits per byte
        "final_eval_bits_per_byte": s["final_eval_loss"] / math.log(2),
        "final_train_loss": s["final_train_loss"],
        "delta_vs_bf16_pct": delta,
        "tokens_per_s": s["median_tokens_per_s"],
        "optimizer_bytes_per_param": s["optimizer_state"][
          "bytes_per_parameter"
        ],
        "quantized_gemms": s["gemms"]["quantized"],
        "unquantized_gemms": s["gemms"]["unquantized"],
      }
    )
  return rows


COLUMNS = (
  "run",
  "steps",
  "final eval loss",
  "eval bits/byte",
  "train loss (mean of last 10% of steps)",
  "vs bf16",
  "tokens/s",
  "optimizer state B/param",
  "quantized / unquantized GEMMs per step",
)


def _cells(r: dict) -> tuple[str, ...]:
  """One comparison row as the strings of ``COLUMNS``."""
  delta, tps = r["delta_vs_bf16_pct"], r["tokens_per_s"]
  return (
    r["run"],
    str(r["steps"]),
    f"{r['final_eval_loss']:.4f}",
    f"{r['final_eval_bits_per_byte']:.4f}",
    f"{r['final_train_loss']:.4f}",
    "-" if delta is None else f"{delta:+.2f}%",
    "-" if tps is None else f"{tps:.0f}",
    f"{r['optimizer_bytes_per_param']:.3f}",
    f"{r['quantized_gemms']} / {r['unquantized_gemms']}",
  )


def markdown_table(rows: list[dict]) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
  lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def print_table(rows: list[dict], title: str) -> None:
  from rich.console import Console
  from rich.table import Table

  table = Table(title=title)
  for col in COLUMNS:
    if col == "run":
      table.add_column(col, justify="left", no_wrap=True)
    else:
      table.add_column(col, justify="right")
  for r in rows:
    table.add_row(*_cells(r))
  Console(width=120).print(table)


def write_comparison(
  out_dir: pathlib.Path, summaries: list[dict], provenance: dict
) -> list[dict]:
  """comparison.png, summary.json and summary.md for one or several runs,
  and each run's GEMM census as ``<run>/census.txt``."""
  for s in summaries:
    (out_dir / s["run"] / "census.txt").write_text(
      "\n".join(s["gemms"]["table"]) + "\n"
    )
  rows = comparison_rows(summaries)
  runs = {s["run"]: out_dir / s["run"] for s in summaries}
  plot_runs(runs, out_dir / "comparison.png", "lowprec_jax GPT: loss by run")
  (out_dir / "summary.json").write_text(
    json.dumps({"rows": rows, "provenance": provenance}, indent=2)
  )
  (out_dir / "summary.md").write_text(
    f"Command: `{provenance['command']}`  \n"
    f"Device: {provenance['device']}, jax {provenance['jax']}, commit "
    f"{provenance['commit']}, {provenance['date']}\n\n" + markdown_table(rows)
  )
  return rows


def redraw(out_dir: pathlib.Path) -> None:
  """Redraws ``comparison.png`` and each run's ``loss.png`` under
  ``out_dir`` (a comparison written by ``python -m train``)."""
  summary = json.loads((out_dir / "summary.json").read_text())
  runs = {r["run"]: out_dir / r["run"] for r in summary["rows"]}
  for name, run_dir in runs.items():
    plot_runs({name: run_dir}, run_dir / "loss.png", name)
  plot_runs(runs, out_dir / "comparison.png", "lowprec_jax GPT: loss by run")


if __name__ == "__main__":
  if (
    len(sys.argv) != 2
    or not (pathlib.Path(sys.argv[1]) / "summary.json").is_file()
  ):
    sys.exit(
      "usage: python -m train.report OUT_DIR (a folder with summary.json)"
    )
  redraw(pathlib.Path(sys.argv[1]))
