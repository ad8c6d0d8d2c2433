"""The training CLI: argument and data errors, comparisons, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from train.cli import main
from train.loop import read_metrics
from train.report import redraw

# Every run trains with optax (adamw, or the full-precision part of ours).
pytestmark = pytest.mark.standard_promotion

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_cli_rejects_bad_arguments(capsys):
  with pytest.raises(SystemExit) as e:
    main(["--recipe", "int3", "--out", "/nonexistent"])
  assert e.value.code == 2
  assert "recipe must be one of" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main(["--recipe", "bf16+sgd", "--out", "/nonexistent"])
  assert "optimizer must be one of" in capsys.readouterr().err


def _cli_error(argv, capsys) -> str:
  with pytest.raises(SystemExit) as e:
    main(argv)
  assert e.value.code == 2
  return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_refuses_bad_data_and_settings_before_writing_anything(
  tmp_path, capsys
):
  """Each mistake is one error line (argparse's, exit code 2) and the
  output directory is never created."""
  out = tmp_path / "out"
  base = ["--recipe", "bf16", "--out", str(out), "--steps", "20"]
  base += ["--warmup", "2"]
  short = tmp_path / "short.txt"  # 5000 bytes: a 250-token validation split
  short.write_text("abcd" * 1250)
  binary = tmp_path / "blob.bin"
  binary.write_bytes(b"\0\1" * 4096)
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  cases = {
    "does not exist": ["--data", str(tmp_path / "missing")],
    "is a binary file, not text": ["--data", str(binary)],
    "holds 0 bytes of text": ["--data", str(empty)],
    "validation split has 250 tokens, fewer than one window of --seq-len 512": [
      "--data",
      str(short),
      "--seq-len",
      "512",
    ],
    "warmup must be in [0, steps); got warmup 30 with steps 20": [
      "--warmup",
      "30",
    ],
  }
  for message, extra in cases.items():
    assert message in _cli_error(base + extra, capsys)
    assert not out.exists()
  argv = ["--recipe", "bf16", "--out", str(a_file), "--warmup", "2"]
  assert "is a file, not a directory" in _cli_error(argv, capsys)


def _cmd(out):
  return [
    sys.executable,
    "-m",
    "train",
    "--recipe",
    "jetfire_int8",
    "--steps",
    "30",
    "--ckpt-every",
    "4",
    "--eval-every",
    "10",
    "--eval-batches",
    "2",
    "--batch-size",
    "4",
    "--seq-len",
    "32",
    "--d-model",
    "32",
    "--layers",
    "1",
    "--heads",
    "2",
    "--warmup",
    "3",
    "--out",
    str(out),
    "--no-progress",
  ]


def _losses(out):
  records = read_metrics(out / "jetfire_int8")
  return [(r["step"], r["loss"], r.get("eval_loss")) for r in records]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_losses(tmp_path):
  """SIGKILL after the step-4 checkpoint; the restart reproduces step 30."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  subprocess.run(
    _cmd(tmp_path / "a"), cwd=ROOT, env=env, check=True, capture_output=True
  )
  proc = subprocess.Popen(
    _cmd(tmp_path / "b"),
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  metrics = tmp_path / "b" / "jetfire_int8" / "metrics.jsonl"
  deadline = time.time() + 300
  # Line 5 is written after checkpoint 4 is complete (saves are synchronous).
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_at = len(metrics.read_text().splitlines())
  assert killed_at < 30
  # A kill during a save leaves "<step>.orbax-checkpoint-tmp"; only complete
  # (numbered) checkpoints count.
  ckpt_dir = metrics.parent / "checkpoints"
  checkpoints = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  assert checkpoints and max(checkpoints) <= killed_at
  subprocess.run(
    _cmd(tmp_path / "b"), cwd=ROOT, env=env, check=True, capture_output=True
  )
  a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
  assert [s for s, _, _ in b] == list(range(1, 31))  # no repeated lines
  assert a == b  # bit-identical losses and eval losses at every step
  # A single run also gets its summary table, plot and GEMM census.
  assert "| jetfire_int8 | 30 |" in (tmp_path / "a" / "summary.md").read_text()
  census = (tmp_path / "a" / "jetfire_int8" / "census.txt").read_text()
  assert (
    census.startswith("role") and "int8_block" in census and "fwd" in census
  )
  assert (tmp_path / "a" / "comparison.png").is_file()


def test_cli_compares_runs(tmp_path, capsys):
  """Runs name a recipe and optionally an optimizer; bf16 is the baseline."""
  argv = _cmd(tmp_path)[3:]  # drop "python -m train"
  argv[argv.index("jetfire_int8")] = "bf16,coat_fp8+adamw_fp8,fp8_current"
  argv[argv.index("30")] = "6"
  assert main(argv + ["--optimizer", "adamw_8bit"]) == 0
  printed = capsys.readouterr().out
  assert "3 runs, 6 steps each" in printed and "coat_fp8+adamw_fp8" in printed
  summary = json.loads((tmp_path / "summary.json").read_text())
  rows = {r["run"]: r for r in summary["rows"]}
  assert set(rows) == {
    "bf16+adamw_8bit",
    "coat_fp8+adamw_fp8",
    "fp8_current+adamw_8bit",
  }
  base = rows["bf16+adamw_8bit"]
  assert all(r["delta_vs_bf16_pct"] is None for r in rows.values())
  for r in rows.values():  # byte-level tokens: nats / ln 2 = bits per byte
    bits = r["final_eval_loss"] / np.log(2)
    assert r["final_eval_bits_per_byte"] == pytest.approx(bits, rel=1e-12)
  assert (
    json.loads((tmp_path / "coat_fp8+adamw_fp8" / "config.json").read_text())[
      "optimizer"
    ]
    == "adamw_fp8"
  )
  assert base["optimizer_bytes_per_param"] < 8
  assert summary["provenance"]["command"].startswith("python -m train")
  table = (tmp_path / "summary.md").read_text()
  assert "| coat_fp8+adamw_fp8 | 6 |" in table
  for png in ("comparison.png", "bf16+adamw_8bit/loss.png"):
    assert (tmp_path / png).stat().st_size > 10_000
  # python -m train.report redraws the plots from the metrics alone.
  for png in ("comparison.png", "bf16+adamw_8bit/loss.png"):
    (tmp_path / png).unlink()
  redraw(tmp_path)
  for png in ("comparison.png", "bf16+adamw_8bit/loss.png"):
    assert (tmp_path / png).stat().st_size > 10_000


def test_cli_deltas_are_relative_to_the_bf16_adamw_run(tmp_path):
  argv = _cmd(tmp_path)[3:]
  argv[argv.index("jetfire_int8")] = "bf16,bf16+adamw_4bit"
  argv[argv.index("30")] = "4"
  assert main(argv) == 0
  rows = {
    r["run"]: r
    for r in json.loads((tmp_path / "summary.json").read_text())["rows"]
  }
  assert rows["bf16"]["delta_vs_bf16_pct"] == 0.0
  expected = 100 * (
    rows["bf16+adamw_4bit"]["final_eval_loss"] / rows["bf16"]["final_eval_loss"]
    - 1
  )
  assert rows["bf16+adamw_4bit"]["delta_vs_bf16_pct"] == pytest.approx(expected)
