"""Test configuration: two CPU devices for sharding tests, strict ranks."""

import jax

# Must happen before any backend is initialised.
jax.config.update("jax_num_cpu_devices", 2)
# Catch silent broadcasting of mismatched ranks in our code.
jax.config.update("jax_numpy_rank_promotion", "raise")
