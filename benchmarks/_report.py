"""Tables, ratios and the issue-3 target checks of ``benchmarks.kernels``."""

# (recipe, implementation, minimum speed-up over bf16 forward + backward)
SPEEDUP_TARGETS = (
  ("jetfire_int8_b128", "mosaic", 1.5),
  ("fp8_current", "mosaic", 1.6),
  ("fp8_block", "mosaic", 1.4),
)
COPY_FRACTION_TARGET = 0.7


def progress_line(row: dict) -> str:
  what = f"{row['shape']:>20} {row['mode']:>7} {row['impl']:>7} "
  what += f"{row['recipe'] or '-':>18}"
  if row["status"] != "ok":
    return f"{what}  {row['status'][:120]}"
  return (
    f"{what}  {1e3 * row['median_s']:9.3f} ms  {row['tflops']:7.1f} TFLOP/s "
    f"{','.join(row['gemm_paths'])}"
  )


def add_ratios(rows: list[dict]) -> None:
  """speedup = bf16 time / time, same shape and mode, same run."""
  base = {
    (r["shape"], r["mode"]): r["median_s"]
    for r in rows
    if r["impl"] == "bf16" and r["status"] == "ok"
  }
  for r in rows:
    key = (r["shape"], r["mode"])
    if r["status"] == "ok" and key in base:
      r["speedup_vs_bf16"] = base[key] / r["median_s"]


def _find(rows, shape, recipe, impl, mode="fwd_bwd"):
  for r in rows:
    if (r["shape"], r["recipe"], r["impl"], r["mode"]) == (
      shape,
      recipe,
      impl,
      mode,
    ):
      return r
  return None


def target_checks(rows, quantize, shape) -> list[dict]:
  """Issue 3's speed targets, each with the figure and pass/fail/missing."""
  checks = []
  for recipe, impl, need in SPEEDUP_TARGETS:
    r = _find(rows, shape, recipe, impl)
    got = r.get("speedup_vs_bf16") if r else None
    checks.append(
      {
        "target": f"{recipe} {impl} fwd+bwd >= {need}x bf16 ({shape})",
        "value": got,
        "passed": None if got is None else got >= need,
      }
    )
  ours = _find(rows, shape, "fp8_current", "mosaic")
  xla = _find(rows, shape, "fp8_current", "xla_fp8")
  both = ours and xla and ours["status"] == xla["status"] == "ok"
  peer = xla.get("fp8_gemm_path") if both else None
  check = {
    "target": "fp8_current mosaic fwd+bwd no slower than XLA's own fp8",
    "value": xla["median_s"] / ours["median_s"] if both else None,
    "passed": ours["median_s"] <= xla["median_s"] if both else None,
    "peer_gemm_path": peer,
  }
  if both and peer is None:  # the peer multiplied in bf16: no FP8 baseline
    check.update(passed=False, status="peer ran no FP8 GEMM")
  checks.append(check)
  b32 = _find(rows, shape, "jetfire_int8", "mosaic")
  checks.append(
    {
      "target": "jetfire_int8 (K block 32) mosaic fwd+bwd: figure only",
      "value": b32.get("speedup_vs_bf16") if b32 else None,
      "passed": None,
    }
  )
  for q in quantize:
    got = q.get("fraction_of_copy")
    checks.append(
      {
        "target": f"{q['impl']} {q.get('step', 'quantize')} ({q['recipe']}) >= "
        f"{COPY_FRACTION_TARGET:.0%} of copy bandwidth",
        "value": got,
        "passed": None if got is None else got >= COPY_FRACTION_TARGET,
        "status": q["status"],
      }
    )
  return checks


def _cell(row) -> str:
  if row is None:
    return "-"
  if row["status"] != "ok":
    return row["status"].split(":")[0]
  ratio = row.get("speedup_vs_bf16")
  tail = f" ({ratio:.2f}x)" if ratio else ""
  return f"{1e3 * row['median_s']:.3f} ms{tail}"


def _gemm_table(rows: list[dict]) -> list[str]:
  """Rows of mode "gemm": one GEMM kernel alone on ready codes, against the
  bf16 GEMM of the same shape."""
  if not rows:
    return []
  out = [
    "",
    "| GEMM kernel alone | shape | impl | ms | TFLOP/s | % peak |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    name = r["recipe"] or "bf16 (XLA)"
    if r["status"] == "ok":
      out.append(
        f"| {name} | {r['shape']} | {r['impl']} | {_cell(r)} | "
        f"{r['tflops']:.0f} | {r['pct_peak']:.0f}% |"
      )
    else:
      out.append(
        f"| {name} | {r['shape']} | {r['impl']} | {_cell(r)} | - | - |"
      )
  return out


def markdown(result: dict, info: dict) -> str:
  """GEMM table (ms and speed-up per mode), quantize table, targets."""
  rows = [r for r in result["rows"] if r["mode"] != "gemm"]
  keys = []
  for r in rows:
    key = (r["shape"], r["recipe"], r["impl"])
    if key not in keys:
      keys.append(key)
  out = [
    f"{result['note']}. `{info['command']}`, commit {info['commit']}, "
    f"jax {info['jax']}, {info['device']}.",
    "",
    "| shape | recipe | impl | fwd | fwd+bwd | TFLOP/s (fwd+bwd) | "
    "% peak | XLA GEMM path |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for shape, recipe, impl in keys:
    fwd = _find(rows, shape, recipe, impl, "fwd")
    both = _find(rows, shape, recipe, impl, "fwd_bwd")
    ok = both if both and both["status"] == "ok" else None
    out.append(
      f"| {shape} | {recipe or '-'} | {impl} | {_cell(fwd)} | {_cell(both)} "
      f"| {ok['tflops']:.0f} | {ok['pct_peak']:.0f}% | "
      f"{','.join(ok['gemm_paths'])} |"
      if ok
      else f"| {shape} | {recipe or '-'} | {impl} | {_cell(fwd)} | "
      f"{_cell(both)} | - | - | - |"
    )
  out += _gemm_table([r for r in result["rows"] if r["mode"] == "gemm"])
  copy = result["copy"]
  out += [
    "",
    f"Device copy: {copy['bytes_per_s'] / 1e9:.0f} GB/s (read + write).",
    "",
    "| quantize | impl | ms | GB/s | of copy |",
    "|---|---|---|---|---|",
  ]
  for q in result["quantize"]:
    if q["status"] == "ok":
      out.append(
        f"| {q['recipe']} {q.get('step', '')} | {q['impl']} | "
        f"{1e3 * q['median_s']:.3f} | "
        f"{q['bytes_per_s'] / 1e9:.0f} | {q['fraction_of_copy']:.0%} |"
      )
    else:
      out.append(f"| {q['recipe']} | {q['impl']} | {q['status']} | | |")
  out += ["", "| mosaic kernel (fwd GEMM alone) | config | ms | TFLOP/s |"]
  out += ["|---|---|---|---|"]
  for t in result["tile_sweep"]:
    mark = " (default)" if t["default"] else ""
    timing = (
      f"{1e3 * t['median_s']:.3f} | {t['tflops']:.0f}"
      if t["status"] == "ok"
      else f"{t['status'][:60]} |"
    )
    out.append(f"| {t['kernel']}{mark} | `{t['config']}` | {timing} |")
  out += ["", "| target | value | passed |", "|---|---|---|"]
  for t in result["targets"]:
    value = "-" if t["value"] is None else f"{t['value']:.2f}"
    out.append(f"| {t['target']} | {value} | {t['passed']} |")
  return "\n".join(out) + "\n"
