"""Test configuration: two CPU devices for sharding tests, strict promotion."""

import jax

# Must happen before any backend is initialised.
jax.config.update("jax_num_cpu_devices", 2)
# Catch silent broadcasting of mismatched ranks in our code.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Catch silent dtype promotion (an upcast to f32 or a downcast to bf16 is a
# precision bug in a low-precision library): mixing dtypes must be explicit.
jax.config.update("jax_numpy_dtype_promotion", "strict")
