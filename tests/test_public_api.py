"""The public surface: every exported name exists and is documented."""

import importlib
import inspect

import pytest

MODULES = [
  "lowprec_jax",
  "lowprec_jax.formats",
  "lowprec_jax.ops",
  "lowprec_jax.nn",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_exports_exist_and_have_docstrings(name):
  module = importlib.import_module(name)
  assert module.__doc__
  for symbol in module.__all__:
    obj = getattr(module, symbol)
    if inspect.isfunction(obj) or inspect.isclass(obj):
      assert obj.__doc__, f"{name}.{symbol} has no docstring"


def test_top_level_quickstart_names():
  import lowprec_jax as lp

  for symbol in (
    "quantize",
    "quantized_dot_general",
    "QuantLinear",
    "quantize_model",
    "census",
    "Int8Block",
    "Fp8",
  ):
    assert symbol in lp.__all__
  assert lp.__version__
