"""``quantized_dot_general`` and its gradients lower for CUDA on this host.

Under :func:`pallas_kernels.backend.cuda_lowering` the program is the one a
GPU would run: ``implementation=None`` picks the GPU's choice and the
kernels compile (no interpreter callbacks), under a mesh whose axis is
Auto or Explicit (sharding in types). ``None`` never settles on the
``"xla"`` INT8 GEMM for a GPU: it raises instead.
"""

import collections
import re

import jax
import jax.numpy as jnp
import pytest

from lowprec_jax.formats import Int8Block
from lowprec_jax.ops import census, get_recipe, quantized_dot_general
from pallas_kernels.backend import cuda_lowering, target_backend
from tests.ops.reference import fwd_only

DIMS = (((1,), (0,)), ((), ()))
X = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16)
W = jax.ShapeDtypeStruct((512, 256), jnp.bfloat16)


def _loss(config):
  def loss(x, w):
    return quantized_dot_general(x, w, DIMS, config=config, seed=7).sum()

  return jax.grad(loss, argnums=(0, 1))


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "auto"])
@pytest.mark.parametrize("recipe", ["jetfire_int8", "fp8_block"])
def test_op_and_gradients_lower_for_cuda_with_mosaic_kernels(recipe, explicit):
  grad = _loss(get_recipe(recipe))
  with cuda_lowering(explicit=explicit):
    assert target_backend() == "gpu"
    text = jax.jit(grad).trace(X, W).lower(lowering_platforms=("cuda",))
    gemms = census(grad, X, W)
  calls = collections.Counter(
    re.findall(r"custom_call @([\w$.]+)", text.as_text())
  )
  assert calls["mosaic_gpu_v2"] >= 3, calls
  assert not [c for c in calls if "callback" in c], calls
  assert [r.implementation for r in gemms.records if r.quantized] == [
    "mosaic"
  ] * 3, gemms


def test_none_never_picks_the_xla_int8_gemm_for_a_gpu():
  mixed = fwd_only("mixed_blocks", Int8Block(32), Int8Block(64))
  grad = _loss(mixed)
  with cuda_lowering():
    with pytest.raises(
      NotImplementedError,
      match=r"no kernel implementation can run config 'mixed_blocks' on this "
      r"GPU \(mosaic: fwd .* \| pallas: fwd .*\), and the xla "
      r"implementation's INT8 GEMMs \(fwd\) are a scan over K blocks.*pass "
      r"implementation='xla'",
    ):
      jax.jit(grad).trace(X, W)
  # On this CPU host the same call picks xla, as documented.
  assert [r.implementation for r in census(grad, X, W).records] == ["xla"] + [
    "none"
  ] * 2
