"""One ``python -m train`` step per recipe lowers for CUDA on this host.

The step is the CLI's own (``loop.build`` + ``loop.make_steps``), traced
under :func:`pallas_kernels.backend.cuda_lowering` with
``implementation=None``, so every choice is the one a GPU would make: the
quantized GEMMs and quantizers are Mosaic GPU kernels and the quantized
optimizer update is the Pallas (Triton) kernel, never the interpreter (no
host callback is left in the program). PTX compilation is left to the GPU
run (or the offline-compile tier).
"""

import collections
import re

import jax
import jax.numpy as jnp
import pytest

from lowprec_jax.ops import census
from pallas_kernels.backend import cuda_lowering
from train import loop
from train.model import GPTConfig

# Every run trains with optax (adamw, or the full-precision part of ours).
pytestmark = pytest.mark.standard_promotion

# The smallest GPT whose GEMMs meet every kernel's shape rules.
MODEL = GPTConfig(seq_len=64, d_model=128, n_layers=1, n_heads=2)
QUANTIZED_GEMMS = 12  # 4 block Linears x (fwd, dlhs, drhs)


def _lowered_step(
  recipe: str, optimizer: str, model: GPTConfig = MODEL, implementation=None
):
  cfg = loop.TrainConfig(
    recipe=recipe,
    optimizer=optimizer,
    model=model,
    batch_size=2,
    implementation=implementation,
  )
  graphdef, state, _ = loop.build(cfg)
  train_step, _ = loop.make_steps(graphdef)
  abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
  batch = jax.ShapeDtypeStruct((2, MODEL.seq_len + 1), jnp.int32)
  state, batch = jax.tree.map(abstract, state), batch
  with cuda_lowering():
    lowered = train_step.trace(state, batch).lower(lowering_platforms=("cuda",))
    gemms = census(train_step, state, batch)
  calls = collections.Counter(
    re.findall(r"custom_call @([\w$.]+)", lowered.as_text())
  )
  return calls, gemms


@pytest.mark.parametrize(
  "recipe, optimizer",
  [
    ("jetfire_int8", "adamw"),
    ("fp8_current", "adamw"),
    ("fp8_block", "adamw"),
    ("coat_fp8", "adamw_fp8"),
  ],
)
def test_train_step_lowers_for_cuda_with_gpu_kernels(recipe, optimizer):
  calls, gemms = _lowered_step(recipe, optimizer)
  assert gemms.total(quantized=True) == QUANTIZED_GEMMS, gemms
  assert {r.implementation for r in gemms.records if r.quantized} == {
    "mosaic"
  }, gemms
  assert not any(r.substituted for r in gemms.records) or recipe == (
    "fp8_block"
  ), gemms
  assert calls["mosaic_gpu_v2"] >= QUANTIZED_GEMMS, calls
  assert not [c for c in calls if "callback" in c], calls
  if optimizer != "adamw":
    assert calls["__gpu$xla.gpu.triton"] >= 1, calls


def test_llama_train_step_lowers_for_cuda_with_gpu_kernels():
  """--arch llama with grouped-query attention (2 query heads, 1 kv head)."""
  llama = GPTConfig(**{**MODEL.__dict__, "arch": "llama", "n_kv_heads": 1})
  calls, gemms = _lowered_step("jetfire_int8", "adamw_8bit", llama)
  assert gemms.total(quantized=True) == QUANTIZED_GEMMS, gemms
  assert {r.implementation for r in gemms.records if r.quantized} == {
    "mosaic"
  }, gemms
  assert calls["mosaic_gpu_v2"] >= QUANTIZED_GEMMS, calls
  assert calls["__gpu$xla.gpu.triton"] >= 1, calls
  assert not [c for c in calls if "callback" in c], calls


@pytest.mark.parametrize("recipe", ["int4_hq", "int4_hq_b32"])
def test_int4_train_step_lowers_for_cuda(recipe):
  # On a GPU, INT4 picks the "pallas" kernels (Triton): the fused Hadamard
  # quantizer, the bit split and the unpack-in-kernel INT8-tensor-core GEMMs
  # (the "mosaic" one is asked for by name), with no host call left.
  calls, gemms = _lowered_step(recipe, "adamw")
  quantized = [r for r in gemms.records if r.quantized]
  assert {r.implementation for r in quantized} == {"pallas"}, gemms
  assert {(r.lhs_dtype, r.rhs_dtype, r.accumulator) for r in quantized} == {
    ("int8", "int8", "int32")
  }, gemms
  fwd = sum(r.count for r in quantized if r.role == "fwd")
  assert fwd == QUANTIZED_GEMMS // 3, gemms
  assert calls["__gpu$xla.gpu.triton"] >= QUANTIZED_GEMMS, calls
  assert not [c for c in calls if "callback" in c], calls


def test_int4_mosaic_train_step_lowers_for_cuda():
  """implementation="mosaic": every INT4 GEMM a Mosaic GPU kernel, the
  quantizers Triton kernels, and the census says who quantized."""
  calls, gemms = _lowered_step("int4_hq_b32", "adamw", implementation="mosaic")
  quantized = [r for r in gemms.records if r.quantized]
  assert {r.implementation for r in quantized} == {"mosaic"}, gemms
  assert {(r.lhs_quantizer, r.rhs_quantizer) for r in quantized} == {
    ("pallas", "pallas")
  }, gemms
  assert sum(r.count for r in quantized) == QUANTIZED_GEMMS, gemms
  assert calls["mosaic_gpu_v2"] >= QUANTIZED_GEMMS, calls
  assert calls["__gpu$xla.gpu.triton"] >= 1, calls
  assert not [c for c in calls if "callback" in c], calls
