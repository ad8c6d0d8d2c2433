"""Compiles one serialized Mosaic GPU module to PTX and runs ptxas (no GPU).

Run by :mod:`benchmarks.ptxas` with the offline-compile venv's Python (no
jax import here): ``python compile_module.py SITE_PACKAGES MODULE.mlirbc``
with ``LD_LIBRARY_PATH`` holding the stand-in ``libcuda.so.1``
(``fakecuda.c``, which answers compute capability 9.0) and
``MOSAIC_GPU_DUMP_PTX=1 MOSAIC_GPU_DUMP_PTXAS=1``. The CUDA plugin's
``MosaicGpuCompile`` prints the PTX and the ptxas report; its host-side JIT
then fails by design ("Symbols not found") and the call returns NULL.
"""

import ctypes
import os
import sys

site, path = sys.argv[1], sys.argv[2]
os.environ.setdefault("MOSAIC_GPU_CUDA_ROOT", f"{site}/nvidia/cu13")
plugin = ctypes.CDLL(f"{site}/jax_plugins/xla_cuda13/xla_cuda_plugin.so")
compile_ = plugin.MosaicGpuCompile
compile_.argtypes = [ctypes.c_char_p, ctypes.c_int]
compile_.restype = ctypes.POINTER(ctypes.c_void_p)
data = open(path, "rb").read()
compile_(data, len(data))
