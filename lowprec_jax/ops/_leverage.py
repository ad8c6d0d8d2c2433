"""Leverage-score sampling (LSS) of bit-split gradients, with static shapes.

The backward GEMMs of a Linear ``y = x w^T`` (x: (N, K) tokens, g: (N, O))
are ``dx = g w`` and ``dw = g^T x``. With the bit split
(:mod:`pallas_kernels.bit_split`) ``g ~ (14 hi + lo) / sigma``, the 2N rows
``r = [14 hi; lo]`` (x duplicated for dw) give

    dw ~ sum_{i < 2N} r_i^T x_i / sigma,      dx_i ~ (r_i + r_{N+i}) w / sigma.

LSS keeps each row i with probability ``p_i`` and rescales it by ``1 / p_i``:
``E[sum_i b_i / p_i r_i^T x_i] = sum_i r_i^T x_i`` (unbiased), with the
scores of the paper, ``s_i = ||r_i|| ||x_i||`` for dw (the optimal
approximate-matrix-multiply weights) and ``s_i = ||r_i||`` for dx, and
water-filled probabilities with budget ``n`` (the paper: n = N, half the
split rows, so the sampled backward costs one INT4 GEMM):

    p_i = min(1, s_i / tau),   tau such that sum_i p_i = n
    (or p_i = [s_i > 0] when fewer than n rows have a non-zero score).

The paper draws independent Bernoulli keeps, so the number of kept rows is
random, and its code then gathers them with host syncs. Here the sample has
a **static size**: systematic (pi-ps) sampling draws one uniform ``u``, lays
the p_i end to end and keeps the rows whose interval holds one of
``u, u + 1, ..., u + n - 1``. Each row is kept with probability exactly
``p_i`` (p_i <= 1 puts at most one point in its interval), so the 1/p
reweighting stays unbiased, and exactly ``round(sum p)`` rows are kept: they
fill a buffer of capacity n (slots past the total mass have weight 0). No
host sync, no data-dependent shape, everything under ``jit``.

``mode="nonzero"`` reproduces the released CUDA path: every row with a
non-zero score is kept with p = 1 (no sampling; the two split GEMMs).
"""

import jax.numpy as jnp
from jax import Array

from pallas_kernels.bit_split import bit_split

LSS_MODES = ("sample", "nonzero")


def water_fill(scores: Array, budget: int) -> Array:
  """Inclusion probabilities ``min(1, s / tau)`` summing to ``budget``.

  Args:
    scores: non-negative f32 scores, shape (R,).
    budget: the expected number of kept rows (static int, 1 <= budget).

  Returns:
    f32 probabilities of shape (R,) in [0, 1]; rows with score 0 get 0, and
    if fewer than ``budget`` rows score above 0 every one of them gets 1.

  ``tau`` is found exactly from the sorted scores (no iteration): with the
  scores in decreasing order ``s_(0) >= s_(1) >= ...`` and tail sums
  ``T_k = sum_{j >= k} s_(j)``, the k largest rows are clipped to 1 for the
  smallest k with ``(budget - k) s_(k) <= T_k``, and ``tau = T_k / (budget -
  k)``.
  """
  if not isinstance(budget, int) or budget < 1:
    raise ValueError(f"budget must be a positive int, got {budget!r}")
  s = scores.astype(jnp.float32)
  ordered = -jnp.sort(-s)
  tails = jnp.cumsum(ordered[::-1])[::-1]
  k = jnp.arange(s.shape[0], dtype=jnp.float32)
  fits = ((budget - k) * ordered <= tails) & (k < budget)
  first = jnp.argmax(fits)  # fits is True at k = #non-zero (or earlier)
  found = jnp.any(fits)
  rest = jnp.float32(budget) - first.astype(jnp.float32)
  tau = jnp.where(found, tails[first] / jnp.maximum(rest, 1.0), 0.0)
  probs = jnp.where(
    tau > 0, jnp.minimum(1.0, s / jnp.where(tau > 0, tau, 1.0)), 0.0
  )
  return jnp.where(tau > 0, probs, (s > 0).astype(jnp.float32))


def systematic_sample(
  probs: Array, capacity: int, u: Array
) -> tuple[Array, Array]:
  """A fixed-size sample with inclusion probabilities ``probs`` (each <= 1).

  Args:
    probs: (R,) f32 inclusion probabilities in [0, 1].
    capacity: the static number of slots (>= ceil(sum probs)).
    u: a uniform in [0, 1) (f32 scalar).

  Returns:
    (indices (capacity,) int32, weights (capacity,) f32): slot j holds row
    ``indices[j]`` with weight ``1 / probs[row]``, or weight 0 (index 0)
    when the points ``u + j`` run past the total mass.
  """
  cumulative = jnp.cumsum(probs.astype(jnp.float32))
  points = u.astype(jnp.float32) + jnp.arange(capacity, dtype=jnp.float32)
  index = jnp.searchsorted(cumulative, points, side="right").astype(jnp.int32)
  valid = (points < cumulative[-1]) & (index < probs.shape[0])
  index = jnp.where(valid, index, 0)
  p = probs[index]
  weights = jnp.where(valid & (p > 0), 1.0 / jnp.where(p > 0, p, 1.0), 0.0)
  return index, weights


def _split_rows(g: Array, u: Array, split: str):
  """([14 hi; lo] as f32 (2N, O), sigma)."""
  hi, lo, sigma = bit_split(g, u, split)
  rows = jnp.concatenate(
    [14.0 * hi.astype(jnp.float32), lo.astype(jnp.float32)]
  )
  return rows, sigma


def _check_mode(mode: str) -> None:
  if mode not in LSS_MODES:
    raise ValueError(f"mode must be one of {LSS_MODES}, got {mode!r}")


def row_norms(a: Array) -> Array:
  """L2 norms of the rows (last axis) in f32: the leverage scores' factors."""
  return jnp.sqrt(jnp.sum(a.astype(jnp.float32) ** 2, axis=-1))


def lss_weight_gradient(
  g: Array,
  x: Array,
  u_split: Array,
  u_sample: Array,
  *,
  split: str = "faithful",
  mode: str = "sample",
  budget: int | None = None,
) -> Array:
  """The bit-split, leverage-sampled estimate of ``dw = g^T x`` (O, K), f32.

  Args:
    g: (N, O) output gradient. x: (N, K) the saved input.
    u_split: (N, O) uniforms for the low part's stochastic rounding.
    u_sample: f32 scalar uniform for systematic sampling.
    split: "faithful" or "full" (:mod:`pallas_kernels.bit_split`).
    mode: "sample" (water-filled, static size ``budget``) or "nonzero".
    budget: rows kept out of 2N (default N, the paper's).
  """
  _check_mode(mode)
  rows, sigma = _split_rows(g, u_split, split)
  xx = jnp.concatenate([x, x]).astype(jnp.float32)
  if mode == "nonzero":
    return rows.T @ xx / sigma
  budget = g.shape[0] if budget is None else budget
  probs = water_fill(row_norms(rows) * row_norms(xx), budget)
  index, weights = systematic_sample(probs, budget, u_sample)
  kept = rows[index] * weights[:, None]
  return kept.T @ xx[index] / sigma


def lss_input_gradient(
  g: Array,
  w: Array,
  u_split: Array,
  u_sample: Array,
  *,
  split: str = "faithful",
  mode: str = "sample",
  budget: int | None = None,
) -> Array:
  """The bit-split, leverage-sampled estimate of ``dx = g w`` (N, K), f32.

  Rows of ``[14 hi; lo]`` are sampled with scores ``||r_i||`` and the kept,
  rescaled halves are summed back to N rows before the GEMM (the paper's row
  sparsification): ``dx_i = (c_i 14 hi_i + c_{N+i} lo_i) w / sigma`` with
  ``c = b / p`` (0 for rows not kept). The factors scale output rows, so a
  kernel folds them into the epilogues of the hi and lo GEMMs.
  """
  _check_mode(mode)
  rows, sigma = _split_rows(g, u_split, split)
  n = g.shape[0]
  if mode == "nonzero":
    factors = jnp.ones((2 * n,), jnp.float32)
  else:
    budget = n if budget is None else budget
    probs = water_fill(row_norms(rows), budget)
    index, weights = systematic_sample(probs, budget, u_sample)
    factors = jnp.zeros((2 * n,), jnp.float32).at[index].add(weights)
  combined = rows[:n] * factors[:n, None] + rows[n:] * factors[n:, None]
  return combined @ w.astype(jnp.float32) / sigma
