"""Test configuration: two CPU devices for sharding tests, strict promotion,
and a compilation cache for this session only."""

import atexit
import os
import shutil
import tempfile

import jax

# Must happen before any backend is initialised.
jax.config.update("jax_num_cpu_devices", 2)
# Catch silent broadcasting of mismatched ranks in our code.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Catch silent dtype promotion (an upcast to f32 or a downcast to bf16 is a
# precision bug in a low-precision library): mixing dtypes must be explicit.
jax.config.update("jax_numpy_dtype_promotion", "strict")

# Many tests compile the same program again (a training run restarted after
# a kill, the same recipe under several tests, subprocess runs of the CLI).
# JAX's persistent compilation cache serves the repeats; it lives in a fresh
# directory for this session (inherited by subprocesses through the
# environment) and is deleted at exit, so no run depends on another's cache.
_cache_dir = tempfile.mkdtemp(prefix="lowprec_jax_test_cache_")
atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
jax.config.update("jax_compilation_cache_dir", _cache_dir)
# Cache every program, not only those that took a second to compile: most
# of a tiny training run's compile time is in many small programs (parameter
# initialisers, eval, checkpoint helpers) that every run repeats.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
