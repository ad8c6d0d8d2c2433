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


def test_target_rows_come_first():
  """Forward + backward of the baselines and mosaic at the target shape
  precede everything else, so a device budget that ends the run early
  still reaches them."""
  table = [s for s in kernels.shapes("bench")]
  cases = list(
    kernels._cases(
      table, list(kernels.RECIPES), kernels.IMPLEMENTATIONS, kernels.MODES,
      smoke=False,
    )
  )  # fmt: skip
  n_first = 2 + len(kernels.RECIPES)  # bf16, xla_fp8, mosaic per recipe
  head = cases[:n_first]
  assert {c[0] for c in head} == {kernels.TARGET_SHAPE}
  assert {c[-1] for c in head} == {"fwd_bwd"}
  assert [c[5] for c in head] == ["bf16", "xla_fp8"] + ["mosaic"] * (
    n_first - 2
  )
  assert len(cases) == len(set(cases))
  later = [c for c in cases[n_first:] if c[0] == kernels.TARGET_SHAPE]
  assert {c[5] for c in later} == {"bf16", "xla_fp8", *kernels.IMPLEMENTATIONS}


def test_fp8_gemm_path_reads_compiled_hlo():
  from benchmarks._timing import fp8_gemm_path

  triton = (
    "%f = bf16[64,64]{1,0} dot(f8e4m3fn[64,32]{1,0} %a, f8e4m3fn[32,64]{1,0} "
    '%b)\n%c = fusion(...), backend_config={"kind":"__triton_gemm"}'
  )
  assert fp8_gemm_path(triton) == "triton_fp8"
  assert fp8_gemm_path('custom_call_target="__cublas$lt$matmul$f8"') == (
    "cublaslt_fp8"
  )
  bf16 = triton.replace("f8e4m3fn", "bf16")
  assert fp8_gemm_path(bf16) is None


def test_time_in_loop_runs_every_call():
  """Device-side timing: the looped program computes fn once per repeat
  (its outputs are the carry) and reports the time per call."""
  import jax.numpy as jnp

  from benchmarks._timing import time_in_loop

  calls = []
  fn = lambda v: (calls.append(1), (v * 2, v.sum()))[1]  # noqa: E731
  t = time_in_loop(fn, jnp.ones((8, 8)), repeats=3, warmup=0, iters=2)
  assert t["repeats"] == 3 and 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
  assert calls == [1, 1]  # traced once by eval_shape, once in the loop body


def test_int4_rows_follow_the_target_mosaic_rows():
  """At the target shape, the INT4 op's forward + backward (kernels first)
  and its GEMM kernels alone come right after the 8-bit forward + backward
  rows, before any forward-only row; the op's forward after the 8-bit
  forward."""
  table = [s for s in kernels.shapes("bench")]
  all_cases = kernels._cases(
    table, list(kernels.ALL_RECIPES), kernels.IMPLEMENTATIONS, kernels.MODES,
    smoke=False,
  )  # fmt: skip
  cases = list(all_cases)
  is_int4 = lambda c: c[-1] == "gemm" or (c[4] or "").startswith("int4")  # noqa: E731
  first_int4 = next(i for i, c in enumerate(cases) if is_int4(c))
  head = cases[:first_int4]
  assert {c[5] for c in head} == {"bf16", "xla_fp8", "mosaic"}
  assert {(c[0], c[-1]) for c in head} == {(kernels.TARGET_SHAPE, "fwd_bwd")}
  assert cases[first_int4][4:] == ("int4_hq_b32", "pallas", "fwd_bwd")
  first_fwd = next(i for i, c in enumerate(cases) if c[-1] == "fwd")
  block = cases[first_int4:first_fwd]
  assert all(is_int4(c) for c in block)
  assert {c[-1] for c in block} == {"fwd_bwd", "gemm"}
  gemm = [c for c in block if c[-1] == "gemm"]
  assert gemm[0][4:] == (None, "bf16", "gemm")  # the baseline of the ratios
  assert {c[5] for c in gemm[1:]} == {"mosaic", "pallas"}
  int4 = [c for c in cases if is_int4(c)]
  assert {c[0] for c in int4} == {kernels.TARGET_SHAPE}
  assert len(cases) == len(set(cases))


def test_int4_smoke_rows(tmp_path):
  """The INT4 op's forward and one GEMM kernel alone, interpreted, with
  the kernel implementations."""
  kernels.main(
    [
      "--smoke",
      "--out",
      str(tmp_path),
      "--recipes",
      "int4_hq_b32,int4_gemm_b32",
      "--modes",
      "fwd,gemm",
      "--impls",
      "pallas,mosaic",
    ]
  )
  (json_path,) = tmp_path.glob("smoke_*.json")
  rows = json.loads(json_path.read_text())["rows"]
  status = {(r["recipe"], r["impl"], r["mode"]): r["status"] for r in rows}
  for impl in ("mosaic", "pallas"):
    assert status[("int4_hq_b32", impl, "fwd")] == "ok"
    assert status[("int4_gemm_b32", impl, "gemm")] == "ok"
  assert status[(None, "bf16", "gemm")] == "ok"
  assert "GEMM kernel alone" in json_path.with_suffix(".md").read_text()
