"""benchmarks.optimizer_state_bytes: exact figures for real model shapes."""

import math

import jax
import pytest

from benchmarks import optimizer_state_bytes as osb


def test_model_shapes_have_the_published_sizes():
  for make, count in (
    (osb.gpt2_124m, 124_439_808),
    (osb.llama_7b, 6_738_415_616),
  ):
    shapes = jax.tree.leaves(make(), is_leaf=lambda x: isinstance(x, tuple))
    assert sum(math.prod(s) for s in shapes) == count


def test_llama_7b_bytes_per_parameter():
  """Every LLaMA-7B matrix is aligned (4096, 11008, 32000 are multiples of
  256), so with every matrix quantized the figure is the per-format value
  plus the fp32 norms (2 * 4096 * 33 elements at 8 bytes) and one count."""
  result = osb.measure({"llama_7b": osb.llama_7b})
  rows = {(r["mask"], r["optimizer"]): r for r in result["rows"]}
  count = 6_738_415_616
  norms = 4096 * 65
  for name, per_param in [
    ("adamw_fp8", 2 * (1 + 12 / 128)),
    ("adamw_fp8 compact", 2 * (1 + 4 / 128)),
    ("adamw_8bit", 2 * (1 + 4 / 256)),
    ("adamw_4bit", 2 * (0.5 + 4 / 128)),
  ]:
    row = rows[("all matrices", name)]
    expected = (count - norms) * per_param + norms * 8 + 4
    assert row["state_bytes"] == expected
  assert rows[("default", "adamw (fp32)")]["bytes_per_param"] == pytest.approx(
    8.0, abs=1e-9
  )
  md = osb.markdown(result, {"command": "c", "commit": "x", "jax": "j"})
  assert "| llama_7b (6,738.4 M) | all matrices | adamw_4bit |" in md
