"""Training runs: every recipe trains, runs resume exactly after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from train.cli import main
from train.loop import TrainConfig, read_metrics, run
from train.model import GPTConfig
from train.report import redraw

# Every run trains with optax (adamw, or the full-precision part of ours).
pytestmark = pytest.mark.standard_promotion

TINY = GPTConfig(seq_len=32, d_model=32, n_layers=1, n_heads=2)


def _tiny(**overrides) -> TrainConfig:
  defaults = dict(
    model=TINY, steps=8, batch_size=4, lr=1e-2, warmup=2, eval_every=4,
    eval_batches=2, ckpt_every=4,
  )  # fmt: skip
  return TrainConfig(**{**defaults, **overrides})


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


@pytest.mark.parametrize(
  "recipe, optimizer, quantized",
  [
    ("bf16", "adamw", 0),
    ("jetfire_int8", "adamw", 12),
    ("fp8_current", "adamw", 12),
    ("fp8_block", "adamw", 12),
    ("coat_fp8", "adamw_fp8", 12),
    ("bf16", "adamw_8bit", 0),
    ("bf16", "adamw_4bit", 0),
    ("int4_hq", "adamw", 16),  # two dlhs GEMMs (hi and lo) per Linear
    ("int4_hq_b32", "adamw", 12),
  ],
)
def test_every_recipe_and_optimizer_trains(
  tmp_path, recipe, optimizer, quantized
):
  cfg = _tiny(recipe=recipe, optimizer=optimizer)
  summary = run(cfg, tmp_path, provenance={"command": "test"}, progress=False)
  records = read_metrics(tmp_path)
  assert [r["step"] for r in records] == list(range(1, 9))
  assert all(np.isfinite(r["loss"]) for r in records)
  assert records[-1]["loss"] < records[0]["loss"]
  assert summary["gemms"]["quantized"] == quantized  # 4 linears x 3 GEMMs
  assert summary["final_eval_loss"] == records[-1]["eval_loss"]
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["provenance"] == {"command": "test"}
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]
  state_bytes = summary["optimizer_state"]["bytes_per_parameter"]
  if optimizer == "adamw":
    assert state_bytes == pytest.approx(8.0, abs=0.01)  # + step counters
  else:
    assert state_bytes < 8.0  # some leaves keep fp32 states (embeddings)


def test_resume_refuses_a_different_config(tmp_path):
  cfg = _tiny(recipe="bf16", steps=4, ckpt_every=2)
  run(cfg, tmp_path, provenance={}, progress=False)
  other = _tiny(recipe="bf16", steps=6, ckpt_every=2, lr=1e-4)
  with pytest.raises(ValueError, match="different config.*'lr'"):
    run(other, tmp_path, provenance={}, progress=False)


@pytest.mark.parametrize(
  "recipe, optimizer", [("jetfire_int8", "adamw"), ("coat_fp8", "adamw_fp8")]
)
def test_kill_during_a_save_resumes_from_the_previous_checkpoint(
  tmp_path, capsys, recipe, optimizer
):
  """The step-8 save never completed: only a partial temporary directory is
  left. The restart must restore step 4 (FP8 optimizer states included),
  clean up, and reproduce steps 5-8 bit for bit."""
  import shutil

  cfg = _tiny(recipe=recipe, optimizer=optimizer)
  run(cfg, tmp_path, provenance={}, progress=False)
  before = read_metrics(tmp_path)
  ckpt = tmp_path / "checkpoints"
  shutil.rmtree(ckpt / "8")
  partial = ckpt / "8.orbax-checkpoint-tmp"
  partial.mkdir()
  (partial / "half_written").write_bytes(b"\0" * 100)
  capsys.readouterr()
  run(cfg, tmp_path, provenance={}, progress=False)
  assert f"{cfg.name}: resumed from step 4" in capsys.readouterr().out

  def untimed(records):
    return [
      {k: v for k, v in r.items() if k != "tokens_per_s"} for r in records
    ]

  assert untimed(read_metrics(tmp_path)) == untimed(before)
  assert sorted(os.listdir(ckpt)) == ["4", "8"]


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


def test_partial_last_metrics_line_is_dropped(tmp_path):
  from train.loop import _Metrics

  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"ste')
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
  _Metrics(path, resume_step=1).close()
  assert [r["step"] for r in read_metrics(tmp_path)] == [1]
  path.write_text('{"ste\n{"step": 2, "loss": 1.5}\n')
  with pytest.raises(json.JSONDecodeError):
    read_metrics(tmp_path)  # corruption before the end is not hidden
