"""Dependency direction: pallas_kernels <- formats <- ops <- nn <- optim.

``pallas_kernels`` works on raw arrays and imports nothing from the library;
the library never imports ``train``.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# package -> packages it must not import
FORBIDDEN = {
  "pallas_kernels": ("lowprec_jax", "train", "flax", "benchmarks"),
  "lowprec_jax/formats": ("lowprec_jax.ops", "lowprec_jax.nn", "train", "flax"),
  "lowprec_jax/ops": ("lowprec_jax.nn", "train", "flax"),
  "lowprec_jax/nn": ("train", "lowprec_jax.optim"),
  "lowprec_jax/optim": ("train", "flax"),
}


def _imports(path: pathlib.Path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_no_upward_imports(package):
  for path in (ROOT / package).rglob("*.py"):
    for name in _imports(path):
      for bad in FORBIDDEN[package]:
        assert name != bad and not name.startswith(bad + "."), (path, name)
