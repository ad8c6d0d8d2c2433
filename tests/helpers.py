"""Shared test helpers: deterministic data and derived error budgets."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

F32_EPS = 2.0**-24  # unit roundoff of float32 (round to nearest)


def rng(*names) -> np.random.Generator:
  """A numpy generator seeded from the test's own parameters."""
  return np.random.default_rng(zlib.crc32(repr(names).encode()))


def normal(shape, dtype=jnp.float32, *, seed=0, scale=1.0):
  x = rng("normal", shape, seed).standard_normal(shape) * scale
  return jnp.asarray(x, jnp.float32).astype(dtype)


def raises(match: str, error: type = ValueError):
  """``pytest.raises(error, match=match)``."""
  return pytest.raises(error, match=match)


def rel_err(a, b) -> float:
  """Relative Frobenius error ||a - b|| / ||b|| in float64."""
  a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  b = np.asarray(jnp.asarray(b, jnp.float32), np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def fp8_ulp(a: np.ndarray, dtype) -> np.ndarray:
  """Spacing of the fp8 grid at magnitudes ``a`` (numpy, float64)."""
  info = jnp.finfo(dtype)
  a = np.abs(np.asarray(a, np.float64))
  with np.errstate(divide="ignore"):
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
  e = np.maximum(e, info.minexp)
  return 2.0 ** (e - info.nmant)


def all_dots(jaxpr):
  """Every dot_general equation in a (closed) jaxpr, recursively."""
  from jax.extend import core

  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.append(eqn)
    for v in eqn.params.values():
      for item in v if isinstance(v, (list, tuple)) else (v,):
        if isinstance(item, core.ClosedJaxpr):
          out += all_dots(item.jaxpr)
        elif isinstance(item, core.Jaxpr):
          out += all_dots(item)
  return out


def tree_bytes(tree) -> int:
  """Bytes of all array leaves (arrays or ShapeDtypeStructs)."""
  return sum(
    int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
  )
