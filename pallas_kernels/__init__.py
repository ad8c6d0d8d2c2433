"""Pallas kernels on raw arrays for lowprec_jax's quantized training.

This package imports nothing from ``lowprec_jax``: kernels take codes, scales
and static block sizes, and ``lowprec_jax.ops`` turns ``QTensor``s into kernel
arguments. The counter-based stochastic-rounding hash lives here
(:mod:`pallas_kernels._hash`) so that the jnp quantizers and the kernels share
one implementation.
"""
