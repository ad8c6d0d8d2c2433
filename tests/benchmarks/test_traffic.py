"""``benchmarks.traffic``: the HBM ledger read off compiled HLO.

The AOT compile for an H200 needs the offline-compile venv (``make
traffic``); here the ledger's reading of an entry computation is checked on
a small hand-written one with every kind of line it must tell apart.
"""

from benchmarks import traffic

# Compiled HLO has long lines.
HLO = """HloModule m

%fused (p: bf16[8,4]) -> f8e4m3fn[8,4] {
  %p = bf16[8,4]{1,0} parameter(0)
  ROOT %c = f8e4m3fn[8,4]{1,0} convert(%p)
}

ENTRY %main (x.1: bf16[8,4], w.1: bf16[4,16]) -> (bf16[8,16], f32[]) {
  %x.1 = bf16[8,4]{1,0} parameter(0), metadata={op_name="x"}
  %w.1 = bf16[4,16]{1,0} parameter(1)
  %b = bf16[1,8,4]{2,1,0} bitcast(%x.1)
  %q = f8e4m3fn[8,4]{1,0} custom-call(%b), custom_call_target="mosaic_gpu_v2", metadata={op_name="jit(step)/lowprec_quantize/q"}
  %t = f8e4m3fn[4,8]{1,0} fusion(%q), kind=kInput, calls=%fused
  %wq = f8e4m3fn[4,16]{1,0} fusion(%w.1), kind=kLoop, calls=%fused
  %y = bf16[8,16]{1,0} custom-call(%q, %wq), custom_call_target="mosaic_gpu_v2", metadata={op_name="jit(step)/lowprec[role=fwd]/jit(lowprec_gemm)/k"}
  %loop = (s32[], f32[]) while(%tuple), condition=%c, body=%b2, backend_config={"known_trip_count":{"n":"25"}}
  %s = f32[] get-tuple-element(%loop), index=1
  ROOT %out = (bf16[8,16]{1,0}, f32[]) tuple(%y, %s)
}
"""  # noqa: E501


def test_ledger_counts_each_kernel_once_with_its_operands_and_result():
  found = traffic.ledger(HLO)
  kernels = {k["name"]: k for k in found["kernels"]}
  assert set(kernels) == {"q", "t", "wq", "y"}  # no params, bitcasts, tuples
  assert (kernels["q"]["read"], kernels["q"]["written"]) == (64, 32)
  assert (kernels["t"]["read"], kernels["t"]["written"]) == (32, 32)
  assert kernels["t"]["kind"] == "fusion:kInput"
  assert (kernels["y"]["read"], kernels["y"]["written"]) == (32 + 64, 256)
  assert [k["name"] for k in found["kernels"] if k["gemm"]] == ["y"]
  assert found["while_loops"] == [{"name": "loop", "trips": 25}]


def test_summary_sets_the_total_against_the_minimum():
  found = traffic.ledger(HLO)
  row = traffic.summarize("fp8_current", found, 8, 4, 16)
  assert row["total_bytes"] == 64 + 32 + 32 + 32 + 128 + 64 + 96 + 256
  assert row["minimum_bytes"] == 4 * (8 * 4 + 4 * 16 + 8 * 16)
  assert row["non_gemm_bytes"] == row["total_bytes"] - (96 + 256)
  assert row["while_iterations"] == 25 and row["predicted_s"] > 0
