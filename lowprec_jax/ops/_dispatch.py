"""The implementations of ``quantized_dot_general`` and how one is chosen.

A ``GemmImplementation`` (``_gemm_implementation.py``) quantizes,
dequantizes and multiplies canonical tensors ((B, M, K) x (B, N, K) ->
(B, M, N)). Three are registered, best
first: ``"mosaic"`` (Hopper kernels), ``"pallas"`` (portable kernels) and
``"xla"`` (the jnp reference quantizer and XLA dots). ``implementation=``
is resolved once per call by :data:`GEMMS` (see
:mod:`lowprec_jax._implementations`): a name or a sequence of them, or
``None``, which on a GPU tries mosaic, pallas, xla in that order (the first
that supports every GEMM of the config) and on a CPU picks xla (the kernels
only run interpreted there, which is for tests: ask for them by name). On a
GPU, ``None`` never lands on xla for an INT8 GEMM: its scan over K blocks
writes an M x N int32 product per block (about 10-40x slower than bf16), so
that raises and says how to ask for it by name.

A GEMM an implementation cannot run raises before anything is traced. A
quantize or dequantize step whose tile has no kernel in a kernel-backed
implementation runs the jnp reference instead (the same bits), and the
census records it: each operand names the implementation that quantized it
(``GemmImplementation.quantizer_for``).
"""

from lowprec_jax._implementations import ImplementationRegistry
from lowprec_jax.ops._config import DotQuantConfig
from lowprec_jax.ops._kernel_gemm import MOSAIC, PALLAS
from lowprec_jax.ops._xla_gemm import XLA
from pallas_kernels.backend import target_backend

GEMMS = ImplementationRegistry(
  op="quantized_dot_general",
  implementations=(MOSAIC, PALLAS, XLA),
  auto={"gpu": ("mosaic", "pallas", "xla")},
)


def resolve(implementation, config: DotQuantConfig):
  """The implementation that will run every GEMM of ``config`` (see above).

  Raises:
    ValueError: for an unknown name.
    NotImplementedError: when the requested implementation(s) cannot run
      the config, with each reason.
  """
  impl = GEMMS.resolve(implementation, config, f"config {config.name!r}")
  if implementation is None and impl is XLA and target_backend() == "gpu":
    int8 = [
      role
      for role, gemm in config.gemms()
      if gemm.quantized and gemm.lhs.format.grid.is_int8
    ]
    if int8:
      kernels = " | ".join(
        f"{k.name}: {k.unsupported_reason(config)}" for k in (MOSAIC, PALLAS)
      )
      raise NotImplementedError(
        f"quantized_dot_general: no kernel implementation can run config "
        f"{config.name!r} on this GPU ({kernels}), and "
        f"the xla implementation's INT8 GEMMs ({', '.join(int8)}) are a scan "
        "over K blocks, about 10-40x slower than bf16 on a GPU; pass "
        "implementation='xla' to run them anyway"
      )
  return impl


def available() -> tuple[str, ...]:
  """Names of the implementations of ``quantized_dot_general``, best first."""
  return GEMMS.names
