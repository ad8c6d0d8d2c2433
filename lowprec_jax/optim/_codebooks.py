"""Codebooks for blockwise-quantized moments, built from their definitions.

**Dynamic (tree) map** (Dettmers et al., "8-bit Optimizers via Block-wise
Quantization", 2022). A ``b``-bit code is read left to right: for a signed map
a sign bit, then ``E = b - 1`` magnitude bits; the number ``z`` of leading
zeros among them (0 <= z < E) is a decimal exponent, the next bit is an
indicator (1), and the remaining ``F = E - 1 - z`` bits select one of ``2^F``
equal bins of [0.1, 1], represented by the bin's midpoint::

    value = ±10^(-z) * (0.1 + 0.9 (j + 1/2) / 2^F),   j < 2^F

So large magnitudes get fine linear steps and small ones a wide dynamic range
(down to ~10^-(E-1)). All-zero magnitude bits encode 0; the one redundant
pattern (negative zero) encodes +1.0, so a group's absmax element, when
positive, is represented exactly. The unsigned map (for second moments) reads
the sign bit as one more fraction bit (``F = E - z``), doubling the resolution
of each decade. Signed 8-bit: 2 * 127 + 2 codes; unsigned 8-bit: 254 + 2;
signed 4-bit: 2 * 7 + 2.

**Linear map without zero** (for 4-bit second moments): ``j / 2^b`` for
``j = 1..2^b``. With a zero code, a small second moment in a group with a
large absmax would round to v = 0 and turn ``m / (sqrt(v) + eps)`` into
``m / eps``, a huge step (Li et al., "Memory Efficient Optimizers with 4-bit
States", 2023, the "zero-point problem"); without it, v is at worst
over-estimated (to absmax/16), which only shrinks that element's step.

Codes are sorted, so a quantized value is an index into the sorted codebook,
and the nearest code is found by comparing against the midpoints between
neighbouring codes (``nearest(x) = #{midpoints < x}``).
"""

import functools

import numpy as np


def _bin_midpoints(fraction_bits: int) -> np.ndarray:
  n = 2**fraction_bits
  return 0.1 + 0.9 * (np.arange(n) + 0.5) / n


@functools.cache
def dynamic_map(bits: int, signed: bool) -> tuple[float, ...]:
  """The sorted dynamic map of ``2**bits`` codes (see module docstring)."""
  exponent_bits = bits - 1
  magnitudes = []
  for z in range(exponent_bits):
    fraction_bits = exponent_bits - 1 - z + (0 if signed else 1)
    magnitudes.append(10.0**-z * _bin_midpoints(fraction_bits))
  magnitudes = np.concatenate(magnitudes)
  values = np.concatenate([magnitudes, -magnitudes if signed else [], [0, 1]])
  values = np.sort(values.astype(np.float32))
  if values.size != 2**bits or np.any(np.diff(values) <= 0):
    raise AssertionError(f"dynamic map {bits=} {signed=} is not a code table")
  return tuple(float(v) for v in values)


@functools.cache
def linear_nonzero_map(bits: int) -> tuple[float, ...]:
  """``j / 2^bits`` for ``j = 1..2^bits``: non-negative, no zero code."""
  n = 2**bits
  return tuple(float(v) for v in np.arange(1, n + 1, dtype=np.float32) / n)


def tables(values: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
  """(codebook, midpoints) as float32 arrays of the same power-of-two length.

  Midpoints are computed in float64 and rounded; the unused last slot is
  +inf so kernels can load a power-of-two block.
  """
  codebook = np.asarray(values, np.float64)
  midpoints = np.append((codebook[:-1] + codebook[1:]) / 2, np.inf)
  return codebook.astype(np.float32), midpoints.astype(np.float32)
