"""Hopper (Mosaic GPU) kernels: the ``"mosaic"`` implementation.

Same raw-array contracts as the portable kernels in ``pallas_kernels``, in
modules of the same names: :mod:`pallas_kernels.mosaic.int8_matmul`
(``int8_block_matmul``) and :mod:`pallas_kernels.mosaic.fp8_matmul`
(``fp8_matmul``). They are written with ``plgpu.kernel``, a warp-specialized
TMA pipeline and 8-bit ``wgmma`` on K-major operands, compile for sm90, and
run on a CPU through the Mosaic GPU interpreter (``interpret=None`` picks it
when no GPU is present). Tiles: :class:`TuningConfig`.
"""

from pallas_kernels.mosaic._config import TuningConfig as TuningConfig
from pallas_kernels.mosaic._config import deepest_pipeline as deepest_pipeline
from pallas_kernels.mosaic._config import default_config as default_config

__all__ = ("TuningConfig", "deepest_pipeline", "default_config")
