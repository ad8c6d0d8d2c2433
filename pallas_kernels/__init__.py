"""Pallas kernels on raw arrays for lowprec_jax's quantized training.

This package imports nothing from ``lowprec_jax``: kernels take codes, scales
and static block sizes, and ``lowprec_jax.ops`` turns ``QTensor``s into kernel
arguments. The numerics every implementation shares live here, once:
:mod:`pallas_kernels.numerics` (rounding, the scale rule, the exact
reciprocal, the stochastic-rounding hash, all from operations every backend
lowers exactly), :mod:`pallas_kernels.tiles` (the scale-tile vocabulary and
geometry), :mod:`pallas_kernels.checks` (argument checks) and
:mod:`pallas_kernels.quantize_reference` (the jnp quantizer behind
``lowprec_jax.formats.quantize``).

The modules are the API (``pallas_kernels.quantize``,
``pallas_kernels.int8_matmul``, ``pallas_kernels.fp8_matmul``,
``pallas_kernels.quantized_adam`` with ``pallas_kernels.moment_codecs``);
nothing is re-exported here, because ``fp8_matmul`` names both a module and
its kernel.
Operands are canonical and K-major: ``a`` (B, M, K), ``b`` (B, N, K), output
(B, M, N); scales are f32 3-D arrays shaped like ``QTensor.scale``. Each
kernel has a plain-jnp ``*_reference`` twin with the same arguments.
"""
