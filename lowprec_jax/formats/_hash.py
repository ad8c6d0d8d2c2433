"""The stochastic-rounding hash, re-exported from :mod:`pallas_kernels._hash`.

The hash is written once, in the kernel package (which imports nothing from
``lowprec_jax``), so the plain-jnp quantizers here and the Pallas kernels call
the very same code and produce the same bits for the same key.
"""

from pallas_kernels._hash import derive_seed as derive_seed
from pallas_kernels._hash import mix32 as mix32
from pallas_kernels._hash import random_bits as random_bits
from pallas_kernels._hash import uniform_from_bits as uniform_from_bits
