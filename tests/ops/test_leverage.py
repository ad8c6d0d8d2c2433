"""Leverage-score sampling: water-filling, static-size sampling, unbiasedness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.ops._leverage import (
  lss_input_gradient,
  lss_weight_gradient,
  systematic_sample,
  water_fill,
)
from pallas_kernels.bit_split import bit_split, combined_codes
from tests.helpers import raises, rng


def water_fill_iterative(scores: np.ndarray, budget: int) -> np.ndarray:
  """The paper's loop: p = budget s / sum s, clip to 1 and redistribute the
  rest of the budget over the unclipped entries until max p <= 1."""
  s = scores.astype(np.float64)
  p = np.zeros_like(s)
  fixed = np.zeros(s.shape, bool)
  if (s > 0).sum() <= budget:
    return (s > 0).astype(np.float64)
  while True:
    rest = budget - fixed.sum()
    free = ~fixed
    p[free] = rest * s[free] / s[free].sum()
    over = free & (p > 1)
    if not over.any():
      return np.where(fixed, 1.0, p)
    fixed |= over


@pytest.mark.parametrize("case", range(6))
def test_water_fill_matches_the_iterative_definition(case):
  r = rng("wf", case)
  scores = r.exponential(size=40) ** (1 + case)  # more skew, more clipping
  scores[r.integers(0, 40, size=case)] = 0.0
  budget = [5, 10, 20, 39, 12, 30][case]
  got = np.asarray(water_fill(jnp.asarray(scores, jnp.float32), budget))
  want = water_fill_iterative(scores, budget)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    got.sum(), min(budget, (scores > 0).sum()), rtol=1e-5
  )


def test_water_fill_with_few_nonzero_rows_keeps_them_all():
  p = water_fill(jnp.array([0.0, 2.0, 0.0, 5.0]), 3)
  assert p.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_systematic_sample_has_a_static_size_and_exact_inclusion():
  probs = water_fill(
    jnp.asarray(rng("sys").exponential(size=30), jnp.float32), 8
  )
  n = 2000
  us = (jnp.arange(n, dtype=jnp.float32) + 0.5) / n
  index, weights = jax.vmap(lambda u: systematic_sample(probs, 8, u))(us)
  assert index.shape == weights.shape == (n, 8)
  # Every draw keeps exactly 8 distinct rows (sum p = 8).
  assert bool((weights > 0).all())
  assert all(len(set(row.tolist())) == 8 for row in np.asarray(index)[::97])
  # Inclusion frequency over a stratified u grid equals p to 1/n (f32).
  counts = np.bincount(np.asarray(index).ravel(), minlength=30) / n
  np.testing.assert_allclose(counts, probs, atol=1.5 / n + 1e-5)
  np.testing.assert_allclose(
    np.asarray(weights), 1 / np.asarray(probs)[np.asarray(index)], rtol=1e-6
  )


def test_systematic_sample_pads_with_empty_slots():
  index, weights = systematic_sample(
    jnp.array([1.0, 0.0, 1.0]), 4, jnp.float32(0.5)
  )
  assert index.tolist()[:2] == [0, 2] and weights.tolist() == [
    1.0,
    1.0,
    0.0,
    0.0,
  ]


def _spread(draws) -> float:
  """The root-mean-square distance of the draws from their mean."""
  centred = draws - draws.mean(0, keepdims=True)
  return float(jnp.sqrt(jnp.mean(jnp.sum(centred**2, (1, 2)))))


def _draws(fn, n: int, seed: int):
  def one(i):
    k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(seed), i))
    return fn(jax.random.uniform(k1, G.shape), jax.random.uniform(k2, ()))

  return jax.lax.map(jax.jit(one), jnp.arange(n))


# Gradients whose rows differ in norm by orders of magnitude (few tokens
# carry the loss): where leverage sampling matters.
G = jnp.asarray(
  rng("g").standard_normal((64, 24))
  * np.exp(2 * rng("r").standard_normal((64, 1))),
  jnp.float32,
)
X = jnp.asarray(rng("x").standard_normal((64, 40)), jnp.float32)
W = jnp.asarray(rng("w").standard_normal((24, 40)), jnp.float32)


@pytest.mark.parametrize("which", ["weight", "input"])
def test_full_split_with_sampling_is_unbiased_like_one_over_sqrt_n(which):
  if which == "weight":
    fn = lambda u, us: lss_weight_gradient(G, X, u, us, split="full")  # noqa: E731
    exact = G.T @ X
  else:
    fn = lambda u, us: lss_input_gradient(G, W, u, us, split="full")  # noqa: E731
    exact = G @ W
  draws = _draws(fn, 1024, 0)
  spread = _spread(draws)
  errors = []
  for n in (16, 64, 256, 1024):
    errors.append(float(jnp.linalg.norm(draws[:n].mean(0) - exact)))
    # Within 4 standard errors of the mean of n draws (an unbiased mean's
    # error is spread / sqrt(n)).
    assert errors[-1] < 4 * spread / np.sqrt(n)
  # And it keeps shrinking like 1/sqrt(n): 64x the draws, < 1/4 the error.
  assert errors[-1] < errors[0] / 4


def test_faithful_split_is_biased_where_it_clips():
  draws = _draws(lambda u, us: lss_weight_gradient(G, X, u, us), 1024, 1)
  spread = _spread(draws)
  error = float(jnp.linalg.norm(draws.mean(0) - G.T @ X))
  assert error > 4 * spread / np.sqrt(1024)


def test_nonzero_mode_keeps_every_row():
  u = jnp.full(G.shape, 0.5)
  got = lss_weight_gradient(
    G, X, u, jnp.float32(0.3), mode="nonzero", split="full"
  )
  hi, lo, sigma = bit_split(G, u, "full")
  want = combined_codes(hi, lo).astype(jnp.float32).T @ X / sigma
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_bad_arguments():
  with raises("budget must be a positive int"):
    water_fill(jnp.ones(3), 0)
  with raises("mode must be one of"):
    lss_weight_gradient(G, X, jnp.zeros(G.shape), jnp.float32(0), mode="half")
