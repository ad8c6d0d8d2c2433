"""``benchmarks.kernels --smoke`` runs end to end on a CPU, labelled.

The smoke run times tiny shapes with interpreted kernels: it checks that the
script works, never a speed claim, and it must not touch ``results/``.
"""

import json
import pathlib
import subprocess

import pytest

from benchmarks import kernels
from benchmarks._results import RESULTS


def test_smoke_run_writes_labelled_results_outside_results(tmp_path):
  before = sorted(p.name for p in RESULTS.iterdir())
  kernels.main(
    [
      "--smoke",
      "--out",
      str(tmp_path),
      "--recipes",
      "fp8_current",
      "--modes",
      "fwd",
    ]
  )
  assert sorted(p.name for p in RESULTS.iterdir()) == before
  (json_path,) = tmp_path.glob("smoke_*.json")
  result = json.loads(json_path.read_text())
  assert result["smoke"] is True
  assert "NOT a speed claim" in result["note"]
  assert "NOT a speed claim" in json_path.with_suffix(".md").read_text()
  ok = {(r["impl"], r["mode"]) for r in result["rows"] if r["status"] == "ok"}
  assert ("bf16", "fwd") in ok and ("xla", "fwd") in ok
  assert result["provenance"]["command"].startswith("python -m benchmarks")
  assert result["copy"]["bytes_per_s"] > 0
  assert all(t["passed"] is None for t in result["targets"])


def test_smoke_needs_an_output_folder():
  with pytest.raises(SystemExit):
    kernels.main(["--smoke"])


def test_gpu_check_script_parses():
  script = pathlib.Path(kernels.__file__).with_name("gpu_check.sh")
  subprocess.run(["bash", "-n", str(script)], check=True)
