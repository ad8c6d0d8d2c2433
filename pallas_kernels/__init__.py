"""Pallas kernels on raw arrays for lowprec_jax's quantized training.

This package imports nothing from ``lowprec_jax``: kernels take codes, scales
and static block sizes, and ``lowprec_jax.ops`` turns ``QTensor``s into kernel
arguments. The counter-based stochastic-rounding hash lives here
(:mod:`pallas_kernels._hash`) so that the jnp quantizers and the kernels share
one implementation, and :mod:`pallas_kernels._rounding` rebuilds every
rounding step from operations all backends lower exactly.

The modules are the API (``pallas_kernels.quantize``,
``pallas_kernels.int8_matmul``, ``pallas_kernels.fp8_matmul``); nothing is
re-exported here, because ``fp8_matmul`` names both a module and its kernel.
Operands are canonical and K-major: ``a`` (B, M, K), ``b`` (B, N, K), output
(B, M, N); scales are f32 3-D arrays shaped like ``QTensor.scale``. Each
kernel has a plain-jnp ``*_reference`` twin with the same arguments.
"""
