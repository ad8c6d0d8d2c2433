"""Helpers shared by the optimizer tests."""

import jax
import numpy as np


def bits(tree) -> list[np.ndarray]:
  """Every array leaf as raw bytes, for bit-for-bit comparisons."""
  return [
    np.asarray(x).reshape(-1).view(np.uint8) for x in jax.tree.leaves(tree)
  ]
