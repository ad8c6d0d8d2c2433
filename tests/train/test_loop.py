"""Training runs: every recipe trains, a run resumes exactly after a kill
during a checkpoint save (the CLI's own kill test: tests/train/test_cli.py)."""

import json
import os

import numpy as np
import pytest

from train.loop import TrainConfig, read_metrics, run
from train.model import GPTConfig

# Every run trains with optax (adamw, or the full-precision part of ours).
pytestmark = pytest.mark.standard_promotion

TINY = GPTConfig(seq_len=32, d_model=32, n_layers=1, n_heads=2)


def _tiny(**overrides) -> TrainConfig:
  defaults = dict(
    model=TINY, steps=8, batch_size=4, lr=1e-2, warmup=2, eval_every=4,
    eval_batches=2, ckpt_every=4,
  )  # fmt: skip
  return TrainConfig(**{**defaults, **overrides})


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
