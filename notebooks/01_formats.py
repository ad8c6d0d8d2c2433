# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Formats: error against scale granularity and outliers
#
# Quantize Gaussian activations with a few outlier channels (as in LLM
# residual streams) with each format, and compare the relative error of the
# values and of a matmul. Run with `jupyter lab` (install `.[notebooks]`) or
# as a script: `python notebooks/01_formats.py`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

from lowprec_jax.formats import Fp8, Int8Block, quantize
from lowprec_jax.ops import quantized_dot_general

key_x, key_w = jax.random.split(jax.random.key(0))
x = jax.random.normal(key_x, (2048, 1024))
x = x.at[:, :8].multiply(50.0)  # eight outlier channels
w = jax.random.normal(key_w, (1024, 1024)) / 32

FORMATS = {
  "int8 32x32": Int8Block(32),
  "int8 128x128": Int8Block(128),
  "e4m3 tensor": Fp8.per_tensor("e4m3"),
  "e4m3 row": Fp8.per_row("e4m3"),
  "e4m3 1x128": Fp8.groups(128, "e4m3"),
  "e4m3 128x128": Fp8.blocks(128, "e4m3"),
  "e5m2 tensor": Fp8.per_tensor("e5m2"),
}


def rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# %%
errors = {}
for name, fmt in FORMATS.items():
  x_hat = quantize(x, fmt).dequantize()
  # Error on the non-outlier channels, where per-tensor scales lose most.
  errors[name] = rel(x_hat[:, 8:], x[:, 8:])
for name, err in errors.items():
  print(f"{name:>14}: relative error of ordinary channels {err:.4f}")

# %%
dims = (((1,), (0,)), ((), ()))
exact = jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST)
recipes = ["jetfire_int8", "fp8_current", "fp8_block"]
gemm_err = {
  r: rel(quantized_dot_general(x, w, dims, config=r, seed=0), exact)
  for r in recipes
}
print(gemm_err)

# %%
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
a.barh(list(errors), list(errors.values()))
a.set_xscale("log")
a.set_xlabel("relative error, ordinary channels")
b.bar(list(gemm_err), list(gemm_err.values()))
b.set_ylabel("relative error of x @ w")
fig.tight_layout()
plt.show()
