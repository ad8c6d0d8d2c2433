"""``benchmarks.ptxas``: its kernel table lowers and its checks can fail.

Compiling to PTX needs the offline-compile venv (``make ptxas``); here the
lowering half runs (every module found, with its launch) and the fit check
is exercised on rows that break each rule.
"""

from benchmarks import ptxas


def test_kernels_lower_to_modules_with_their_launch():
  (int8,) = ptxas.lower_modules("int8_block128_matmul")
  blob, launch = int8
  assert blob and launch["threads"] == 384 and launch["grid"][0] == 132
  assert 0 < launch["smem_bytes"] <= ptxas.SMEM_LIMIT
  # per-tensor FP8 quantize: an absmax kernel, then the quantize kernel
  stages = ptxas.lower_modules("quantize_fp8_tensor")
  assert len(stages) == 2 and all(s[1]["threads"] == 128 for s in stages)


def test_fit_check_names_each_broken_rule():
  fits = dict(
    kernel="int8_block128_matmul",
    module=0,
    registers=168,
    threads=384,
    smem_bytes=ptxas.SMEM_LIMIT,
    spill_store_bytes=0,
    spill_load_bytes=0,
  )
  assert ptxas.problems(fits) == []
  (spill,) = ptxas.problems({**fits, "kernel": "x", "spill_load_bytes": 4})
  assert spill == "spills 0/4 bytes (store/load; known: 0/0)"
  known = dict(kernel="quantize_fp8_row", module=1, spill_store_bytes=8)
  assert ptxas.problems({**fits, **known, "spill_load_bytes": 8}) == []
  assert ptxas.problems({**fits, **known, "spill_load_bytes": 12})
  (regs,) = ptxas.problems({**fits, "registers": 172})
  assert "172 registers x 384 threads exceed 65536" in regs
  (smem,) = ptxas.problems({**fits, "smem_bytes": ptxas.SMEM_LIMIT + 1})
  assert "232449 bytes of SMEM" in smem
