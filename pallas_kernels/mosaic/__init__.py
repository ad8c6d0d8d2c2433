"""Hopper (Mosaic GPU) kernels: the ``"mosaic"`` implementation.

Same raw-array contracts as the portable kernels in ``pallas_kernels``
(``int8_block_matmul``, ``fp8_matmul``), written with ``plgpu.kernel``, a
warp-specialized ``emit_pipeline``, TMA and 8-bit ``wgmma`` on K-major
operands. They compile on sm90 and run on a CPU through the Mosaic GPU
interpreter (``interpret=None`` picks that when no GPU is present).
"""

from pallas_kernels.mosaic._config import TuningConfig as TuningConfig
from pallas_kernels.mosaic._config import default_config as default_config
from pallas_kernels.mosaic.fp8_matmul import fp8_matmul as fp8_matmul
from pallas_kernels.mosaic.int8_matmul import (
  int8_block_matmul as int8_block_matmul,
)

__all__ = (
  "TuningConfig",
  "default_config",
  "fp8_matmul",
  "int8_block_matmul",
)
