"""Writing a benchmark's results: JSON with provenance, plus a Markdown table."""

import json
import pathlib
import shlex

from train.provenance import provenance

RESULTS = pathlib.Path(__file__).parent / "results"


def write_results(
  stem: str,
  module: str,
  argv,
  result: dict,
  markdown,
  out_dir: pathlib.Path | None = None,
) -> None:
  """Writes <out_dir>/<stem>.json and .md (default: ``RESULTS``) and prints
  the table.

  ``markdown(result, info)`` renders the table; ``info`` is the provenance
  (device, versions, commit, the command ``python -m <module> <argv>``).
  """
  info = provenance(command=shlex.join(["python", "-m", module, *argv]))
  payload = json.dumps({**result, "provenance": info}, indent=2, default=str)
  out_dir = RESULTS if out_dir is None else out_dir
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / f"{stem}.json").write_text(payload + "\n")
  table = markdown(result, info)
  (out_dir / f"{stem}.md").write_text(table)
  print(table)
