#!/usr/bin/env bash
# The whole H200 check in one call: environment facts, the kernel benchmark
# (its target rows first), then the kernel tests compiled on the GPU (Mosaic
# kernels on realistic shapes, the portable Triton kernels, the op
# implementations).
#
#   PYTHONPATH=. bash benchmarks/gpu_check.sh          # on the H200, $OUT set
#   PYTHONPATH=. bash benchmarks/gpu_check.sh --dry    # on a CPU: interpreted
#                                                      # tests, --smoke bench
#
# Every phase runs under `timeout`, logs to $OUT/<phase>.log and may fail
# without stopping the next one; the exit status is that of the first failed
# phase. Budget (under 9 minutes in all): env 45 s, bench 270 s, tests 180 s
# (each phase is killed at most 15 s after its limit: 9 minutes at worst).
# $OUT receives at most 6 files, none in sub-folders:
#   env.log tests.log bench.log summary.txt <device>.json <device>.md
set -u

OUT=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DRY=0
if [[ "${1:-}" == "--dry" ]]; then DRY=1; fi
export PYTHONUNBUFFERED=1

SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FIRST_FAILURE=0

phase() {  # phase NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  local cmd="$*"
  cmd=${cmd//$'\n'/ }
  echo "== $name (limit ${limit}s): ${cmd:0:160}" | tee -a "$SUMMARY"
  timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local verdict=ok
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    verdict="TIMEOUT"
  elif [[ $rc -ne 0 ]]; then
    verdict="FAILED"
  fi
  echo "   $name: $verdict (rc=$rc, $((SECONDS - start)) s)" | tee -a "$SUMMARY"
  if [[ $rc -ne 0 && $FIRST_FAILURE -eq 0 ]]; then FIRST_FAILURE=$rc; fi
}

ENV_FACTS='date -u
git rev-parse --short HEAD 2>/dev/null || echo "commit: unknown"
nvidia-smi || echo "nvidia-smi: not available"
"$PY" -c "import jax, jaxlib; d = jax.devices()[0]; print(\"jax\",
jax.__version__, \"jaxlib\", jaxlib.__version__, jax.devices());
print(\"kind:\", d.device_kind, \"cores:\", getattr(d, \"core_count\", None))"'
export PY
phase env 45 bash -c "$ENV_FACTS"

# The benchmark first: its own order puts the target rows first.
if [[ $DRY -eq 1 ]]; then
  phase bench 270 "$PY" -m benchmarks.kernels --smoke --out "$OUT" \
    --recipes fp8_current --modes fwd
else
  phase bench 270 "$PY" -m benchmarks.kernels --out "$OUT" --budget-s 150 \
    --sweep-s 45
fi

# The Mosaic subclass of each test base first, then the portable ones.
TESTS=(tests/pallas_kernels/test_int8_matmul.py::TestMosaicInt8Matmul
  tests/pallas_kernels/test_fp8_matmul.py::TestMosaicFp8Matmul
  tests/pallas_kernels/test_quantize.py::TestMosaicQuantize
  tests/pallas_kernels/test_mosaic_lowering.py
  tests/ops/test_implementations.py::TestMosaicImplementation
  tests/pallas_kernels/test_quantize.py::TestPallasQuantize
  tests/pallas_kernels/test_int8_matmul.py::TestPallasInt8Matmul
  tests/pallas_kernels/test_fp8_matmul.py::TestPallasFp8Matmul
  tests/ops/test_implementations.py::TestPallasImplementation
  tests/pallas_kernels/test_int4_matmul.py::TestMosaicInt4Matmul)
phase tests 180 "$PY" -m pytest -q -rA -p no:cacheprovider "${TESTS[@]}"

{
  echo
  echo "== env"
  grep -E "^jax|^kind|NVIDIA H|Driver" "$OUT/env.log" | head -n 4
  echo
  echo "== test results"
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -n 12
  echo
  echo "== benchmark table ($OUT)"
  cat "$OUT"/*.md 2>/dev/null || echo "no benchmark table (see bench.log)"
} | tee -a "$SUMMARY"
exit $FIRST_FAILURE
