"""The README's Python blocks run, in order, in one namespace."""

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.standard_promotion
def test_readme_python_blocks_run_and_census_comment_is_true():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert len(blocks) >= 4
  namespace: dict = {}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    for block in blocks:
      exec(compile(block, str(README), "exec"), namespace)
  printed = [
    line.strip() for line in out.getvalue().splitlines() if line.strip()
  ]
  # The census shown in the README is what the code prints.
  shown = re.findall(r"^#(\s+\d+ x .*)$", README.read_text(), re.M)
  assert [line.strip() for line in shown] == printed
